#include "bench/eval/plot.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/check.h"

namespace kvc::eval {
namespace {

// 5x7 glyphs for ASCII 32..126: 7 rows, bit 4 = leftmost column.
constexpr uint8_t kFont[95][7] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},  // '!'
    {0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00},  // '"'
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a},  // '#'
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04},  // '$'
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},  // '%'
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d},  // '&'
    {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},  // "'"
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},  // '('
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // ')'
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00},  // '*'
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00},  // '+'
    {0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08},  // ','
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00},  // '-'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c},  // '.'
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // '/'
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e},  // '0'
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e},  // '1'
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f},  // '2'
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e},  // '3'
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02},  // '4'
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e},  // '5'
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e},  // '6'
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // '7'
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e},  // '8'
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c},  // '9'
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00},  // ':'
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08},  // ';'
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02},  // '<'
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00},  // '='
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},  // '>'
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},  // '?'
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e},  // '@'
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11},  // 'A'
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e},  // 'B'
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e},  // 'C'
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c},  // 'D'
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f},  // 'E'
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10},  // 'F'
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f},  // 'G'
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11},  // 'H'
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e},  // 'I'
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c},  // 'J'
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},  // 'K'
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f},  // 'L'
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11},  // 'M'
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // 'N'
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e},  // 'O'
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10},  // 'P'
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d},  // 'Q'
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11},  // 'R'
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e},  // 'S'
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // 'T'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e},  // 'U'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04},  // 'V'
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a},  // 'W'
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11},  // 'X'
    {0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04},  // 'Y'
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f},  // 'Z'
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e},  // '['
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00},  // '\\'
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e},  // ']'
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00},  // '^'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f},  // '_'
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00},  // '`'
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f},  // 'a'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e},  // 'b'
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e},  // 'c'
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f},  // 'd'
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e},  // 'e'
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08},  // 'f'
    {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e},  // 'g'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11},  // 'h'
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e},  // 'i'
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c},  // 'j'
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},  // 'k'
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e},  // 'l'
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11},  // 'm'
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},  // 'n'
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e},  // 'o'
    {0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10},  // 'p'
    {0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01},  // 'q'
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10},  // 'r'
    {0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e},  // 's'
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06},  // 't'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d},  // 'u'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04},  // 'v'
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a},  // 'w'
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11},  // 'x'
    {0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e},  // 'y'
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f},  // 'z'
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},  // '{'
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // '|'
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},  // '}'
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},  // '~'
};

void PutU32(std::string* out, uint32_t v) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

void PutChunk(std::string* out, const char type[4], const std::string& data) {
  PutU32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out->append(body);
  PutU32(out,
         static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

}  // namespace

Canvas::Canvas(int32_t width, int32_t height, Rgb background) : width_(width), height_(height) {
  KVC_CHECK(width >= 1 && height >= 1 && width <= 8192 && height <= 8192) << width << "x" << height;
  rgb_.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

Rgb Canvas::At(int32_t x, int32_t y) const {
  KVC_CHECK(x >= 0 && y >= 0 && x < width_ && y < height_);
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  return {rgb_[i], rgb_[i + 1], rgb_[i + 2]};
}

void Canvas::Set(int32_t x, int32_t y, Rgb c) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  rgb_[i] = c.r;
  rgb_[i + 1] = c.g;
  rgb_[i + 2] = c.b;
}

void Canvas::FillRect(int32_t x0, int32_t y0, int32_t x1, int32_t y1, Rgb c) {
  for (int32_t y = std::min(y0, y1); y <= std::max(y0, y1); ++y) {
    for (int32_t x = std::min(x0, x1); x <= std::max(x0, x1); ++x) Set(x, y, c);
  }
}

void Canvas::Line(double x0, double y0, double x1, double y1, Rgb c, int32_t thickness) {
  int32_t ax = static_cast<int32_t>(std::lround(x0)), ay = static_cast<int32_t>(std::lround(y0));
  const int32_t bx = static_cast<int32_t>(std::lround(x1)),
                by = static_cast<int32_t>(std::lround(y1));
  const int32_t dx = std::abs(bx - ax), dy = -std::abs(by - ay);
  const int32_t sx = ax < bx ? 1 : -1, sy = ay < by ? 1 : -1;
  int32_t err = dx + dy;
  const int32_t lo = -(thickness - 1) / 2, hi = thickness / 2;
  while (true) {
    FillRect(ax + lo, ay + lo, ax + hi, ay + hi, c);
    if (ax == bx && ay == by) break;
    const int32_t e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      ax += sx;
    }
    if (e2 <= dx) {
      err += dx;
      ay += sy;
    }
  }
}

int32_t Canvas::TextWidth(std::string_view text, int32_t scale) {
  return static_cast<int32_t>(text.size()) * 6 * scale;
}

int32_t Canvas::Text(int32_t x, int32_t y, std::string_view text, Rgb c, int32_t scale) {
  int32_t cx = x;
  for (char ch : text) {
    const int idx = (ch >= 32 && ch <= 126) ? ch - 32 : '?' - 32;
    for (int32_t row = 0; row < 7; ++row) {
      for (int32_t col = 0; col < 5; ++col) {
        if (kFont[idx][row] & (0x10 >> col)) {
          FillRect(cx + col * scale, y + row * scale, cx + col * scale + scale - 1,
                   y + row * scale + scale - 1, c);
        }
      }
    }
    cx += 6 * scale;
  }
  return cx - x;
}

absl::StatusOr<std::string> EncodePng(const Canvas& canvas) {
  const int32_t w = canvas.width(), h = canvas.height();
  std::string raw;
  raw.reserve(static_cast<size_t>(h) * (w * 3 + 1));
  const auto& px = canvas.rgb();
  for (int32_t y = 0; y < h; ++y) {
    raw.push_back('\0');  // filter: none
    raw.append(reinterpret_cast<const char*>(px.data()) + static_cast<size_t>(y) * w * 3,
               static_cast<size_t>(w) * 3);
  }
  uLongf zlen = compressBound(raw.size());
  std::string z(zlen, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &zlen,
                reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 9) != Z_OK) {
    return absl::InternalError("PNG: zlib compression failed");
  }
  z.resize(zlen);
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  PutU32(&ihdr, static_cast<uint32_t>(w));
  PutU32(&ihdr, static_cast<uint32_t>(h));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, filter 0, no interlace
  PutChunk(&png, "IHDR", ihdr);
  PutChunk(&png, "IDAT", z);
  PutChunk(&png, "IEND", "");
  return png;
}

absl::Status WritePng(const std::string& path, const Canvas& canvas) {
  auto png = EncodePng(canvas);
  if (!png.ok()) return png.status();
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::NotFoundError(absl::StrCat("cannot write ", path));
  out.write(png->data(), static_cast<std::streamsize>(png->size()));
  if (!out) return absl::InternalError(absl::StrCat("write failed: ", path));
  return absl::OkStatus();
}

Rgb PaletteColor(int32_t i) {
  static constexpr Rgb kPalette[] = {{0, 114, 178}, {213, 94, 0},   {0, 158, 115}, {204, 121, 167},
                                     {230, 159, 0}, {86, 180, 233}, {0, 0, 0},     {240, 228, 66}};
  return kPalette[((i % 8) + 8) % 8];
}

absl::StatusOr<Canvas> RenderLinePlot(const LinePlot& p, int32_t width, int32_t height) {
  if (p.x.empty()) return absl::InvalidArgumentError("plot: no x values");
  for (const PlotSeries& s : p.series) {
    if (s.y.size() != p.x.size()) {
      return absl::InvalidArgumentError(absl::StrCat("plot: series '", s.name, "' has ", s.y.size(),
                                                     " points for ", p.x.size(), " x values"));
    }
  }
  if (p.log2_x) {
    for (double x : p.x) {
      if (!(x > 0)) return absl::InvalidArgumentError("plot: log2 x axis needs x > 0");
    }
  }
  if (!(p.y_max > p.y_min)) return absl::InvalidArgumentError("plot: y_max must exceed y_min");
  Canvas c(width, height);
  const Rgb kAxis{40, 40, 40}, kGrid{225, 225, 225}, kText{20, 20, 20};
  const int32_t left = 64, right = width - 170, top = 40, bottom = height - 56;
  auto fx = [&](double x) { return p.log2_x ? std::log2(x) : x; };
  double xmin = fx(p.x.front()), xmax = fx(p.x.back());
  if (xmax <= xmin) xmax = xmin + 1;
  auto px = [&](double x) { return left + (fx(x) - xmin) / (xmax - xmin) * (right - left); };
  auto py = [&](double y) { return bottom - (y - p.y_min) / (p.y_max - p.y_min) * (bottom - top); };
  // Grid and y ticks (5 intervals).
  for (int i = 0; i <= 5; ++i) {
    const double y = p.y_min + (p.y_max - p.y_min) * i / 5.0;
    const int32_t yy = static_cast<int32_t>(std::lround(py(y)));
    c.Line(left, yy, right, yy, kGrid);
    const std::string label = absl::StrFormat("%.1f", y);
    c.Text(left - 8 - Canvas::TextWidth(label), yy - 3, label, kText);
  }
  for (double x : p.x) {
    const int32_t xx = static_cast<int32_t>(std::lround(px(x)));
    c.Line(xx, top, xx, bottom, kGrid);
    const std::string label = absl::StrFormat("%g", x);
    c.Text(xx - Canvas::TextWidth(label) / 2, bottom + 8, label, kText);
  }
  c.Line(left, top, left, bottom, kAxis, 2);
  c.Line(left, bottom, right, bottom, kAxis, 2);
  c.Text(left, 12, p.title, kText, 2);
  c.Text((left + right) / 2 - Canvas::TextWidth(p.x_label) / 2, bottom + 28, p.x_label, kText);
  // y label, written vertically one character per line.
  for (size_t i = 0; i < p.y_label.size(); ++i) {
    c.Text(8, top + 40 + static_cast<int32_t>(i) * 9, p.y_label.substr(i, 1), kText);
  }
  // Series.
  for (size_t si = 0; si < p.series.size(); ++si) {
    const PlotSeries& s = p.series[si];
    bool have_prev = false;
    double prev_x = 0, prev_y = 0;
    for (size_t i = 0; i < p.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        have_prev = false;
        continue;
      }
      const double xx = px(p.x[i]);
      const double yy = py(std::clamp(s.y[i], p.y_min, p.y_max));
      if (have_prev) c.Line(prev_x, prev_y, xx, yy, s.color, 2);
      const int32_t cx = static_cast<int32_t>(std::lround(xx)),
                    cy = static_cast<int32_t>(std::lround(yy));
      c.FillRect(cx - 3, cy - 3, cx + 3, cy + 3, s.color);
      have_prev = true;
      prev_x = xx;
      prev_y = yy;
    }
    // Legend entry.
    const int32_t ly = top + 10 + static_cast<int32_t>(si) * 18;
    c.Line(right + 16, ly + 3, right + 40, ly + 3, s.color, 3);
    c.Text(right + 46, ly, s.name, kText);
  }
  return c;
}

}  // namespace kvc::eval
