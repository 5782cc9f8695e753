// A tiny PNG line-plot writer for kvc-eval (no plotting library is available here): an RGB
// canvas with lines, markers and a built-in 5x7 bitmap font, encoded as an 8-bit RGB PNG with
// zlib. Enough for "score against compression rate, one line per policy".
//
// Thread-safety: value types and plain functions.
#ifndef KVC_BENCH_EVAL_PLOT_H_
#define KVC_BENCH_EVAL_PLOT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc::eval {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
};

class Canvas {
 public:
  // REQUIRES 1 <= width, height <= 8192 (checked).
  Canvas(int32_t width, int32_t height, Rgb background = {255, 255, 255});
  int32_t width() const { return width_; }
  int32_t height() const { return height_; }
  Rgb At(int32_t x, int32_t y) const;         // REQUIRES in range
  void Set(int32_t x, int32_t y, Rgb color);  // ignores points outside
  void FillRect(int32_t x0, int32_t y0, int32_t x1, int32_t y1, Rgb color);  // inclusive
  // A line `thickness` pixels wide (Bresenham with a square brush).
  void Line(double x0, double y0, double x1, double y1, Rgb color, int32_t thickness = 1);
  // Text in the 5x7 font (ASCII 32..126; others draw as '?'), each font pixel `scale` pixels;
  // (x, y) is the top-left corner. Returns the width drawn.
  int32_t Text(int32_t x, int32_t y, std::string_view text, Rgb color, int32_t scale = 1);
  static int32_t TextWidth(std::string_view text, int32_t scale = 1);
  const std::vector<uint8_t>& rgb() const { return rgb_; }

 private:
  int32_t width_, height_;
  std::vector<uint8_t> rgb_;  // row-major, 3 bytes per pixel
};

// The PNG file bytes of `canvas` (8-bit RGB, filter 0, zlib level 9).
absl::StatusOr<std::string> EncodePng(const Canvas& canvas);
absl::Status WritePng(const std::string& path, const Canvas& canvas);

struct PlotSeries {
  std::string name;
  Rgb color;
  std::vector<double> y;  // one per x; NaN = no point
};

struct LinePlot {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<double> x;  // ascending
  bool log2_x = true;     // x positions by log2 (compression rates 1, 2, 4, ...)
  double y_min = 0, y_max = 1;
  std::vector<PlotSeries> series;
};

// Renders the plot (axes, grid, tick labels, one polyline with markers per series, legend).
// INVALID_ARGUMENT for an empty x, series of the wrong length, or non-positive x with log2_x.
absl::StatusOr<Canvas> RenderLinePlot(const LinePlot& plot, int32_t width = 720,
                                      int32_t height = 480);

// A fixed palette (colour-blind friendly), cycling.
Rgb PaletteColor(int32_t i);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_PLOT_H_
