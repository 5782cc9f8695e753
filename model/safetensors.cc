#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvc {
namespace {

using Json = nlohmann::json;

// Header lengths beyond this are refused (the format's reference implementation uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::Status FileError(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file '", path, "': ", what));
}

absl::Status TensorError(absl::string_view path, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors file '", path, "', tensor '", tensor, "': ", what));
}

}  // namespace

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", std::string(name),
                                                 "' (supported: F32, F16, BF16, I32, I64)"));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kI64:
      return 8;
  }
  return 0;
}

float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow (incl. inf) -> inf
  if (abs < 0x38800000u) {               // below the smallest f16 normal: f16 subnormal or zero
    if (abs < 0x33000000u) return sign;  // at most half the smallest subnormal: rounds to 0
    // value / 2^-24 = mant * 2^(exp - 126), with shift = 126 - exp in [14, 24].
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    uint32_t v = mant >> shift;
    if (rem > half || (rem == half && (v & 1u))) ++v;  // round to nearest even
    return sign | static_cast<uint16_t>(v);
  }
  uint32_t v = abs - 0x38000000u;  // rebias exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);
  return sign | static_cast<uint16_t>(v >> 13);
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status CopyToFloat32(const TensorView& t, std::span<float> out) {
  const int64_t n = t.numel();
  if (static_cast<int64_t>(out.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", t.name, "' has ", n, " elements, destination holds ", out.size()));
  }
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out.data(), t.data, n * sizeof(float));
      return absl::OkStatus();
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);
        out[i] = Bf16ToFloat(v);
      }
      return absl::OkStatus();
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);
        out[i] = F16ToFloat(v);
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' in '", t.file,
                                                     "' has dtype ", DTypeName(t.dtype),
                                                     ", expected a floating dtype"));
  }
}

absl::StatusOr<std::vector<float>> ToFloat32(const TensorView& t) {
  std::vector<float> out(t.numel());
  RETURN_IF_ERROR(CopyToFloat32(t, std::span<float>(out)));
  return out;
}

absl::StatusOr<std::vector<int32_t>> ToInt32(const TensorView& t) {
  const int64_t n = t.numel();
  std::vector<int32_t> out(n);
  if (t.dtype == DType::kI32) {
    std::memcpy(out.data(), t.data, n * 4);
    return out;
  }
  if (t.dtype == DType::kI64) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, t.data + 8 * i, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return absl::OutOfRangeError(
            absl::StrCat("tensor '", t.name, "' value ", v, " does not fit in int32"));
      }
      out[i] = static_cast<int32_t>(v);
    }
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has dtype ",
                                                 DTypeName(t.dtype), ", expected I32 or I64"));
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot open safetensors file '", path, "': ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat("cannot stat '", path, "'"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return FileError(path, absl::StrCat("truncated: ", size,
                                        " bytes, the 8-byte header length "
                                        "is missing"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::DataLossError(absl::StrCat("cannot mmap '", path, "': ", std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map;
  f->map_size_ = size;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len;
  std::memcpy(&header_len, base, 8);  // little-endian hosts only (x86-64, aarch64)
  if (header_len > size - 8) {
    return FileError(path, absl::StrCat("header length ", header_len,
                                        " runs past the end of the "
                                        "file (",
                                        size, " bytes): truncated or not safetensors"));
  }
  if (header_len > kMaxHeaderBytes) {
    return FileError(path, absl::StrCat("header length ", header_len, " is too large"));
  }
  const char* hbegin = reinterpret_cast<const char*>(base + 8);
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  Json header;
  try {
    header = Json::parse(hbegin, hbegin + header_len);
  } catch (const Json::exception& e) {
    return FileError(path, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) return FileError(path, "header is not a JSON object");

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const Json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) return FileError(path, "__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) {
            return FileError(path,
                             absl::StrCat("__metadata__ value of '", m.key(), "' is not a string"));
          }
          f->metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
          !v.contains("data_offsets")) {
        return TensorError(path, name, "entry needs dtype, shape and data_offsets");
      }
      TensorView t;
      t.name = name;
      t.file = path;
      if (!v["dtype"].is_string()) return TensorError(path, name, "dtype is not a string");
      auto dtype = ParseDType(v["dtype"].get<std::string>());
      if (!dtype.ok()) return TensorError(path, name, dtype.status().message());
      t.dtype = *dtype;
      const Json& shape = v["shape"];
      if (!shape.is_array()) return TensorError(path, name, "shape is not a list");
      uint64_t numel = 1;
      for (const Json& d : shape) {
        if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
          return TensorError(path, name, absl::StrCat("bad shape ", shape.dump()));
        }
        const uint64_t dim = d.get<uint64_t>();
        if (dim != 0 && numel > (std::numeric_limits<uint64_t>::max() / 16) / dim) {
          return TensorError(path, name, absl::StrCat("shape ", shape.dump(), " is too large"));
        }
        numel *= dim;
        t.shape.push_back(static_cast<int64_t>(dim));
      }
      const Json& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
          !off[1].is_number_unsigned()) {
        return TensorError(path, name, absl::StrCat("bad data_offsets ", off.dump()));
      }
      const uint64_t begin = off[0].get<uint64_t>();
      const uint64_t end = off[1].get<uint64_t>();
      if (begin > end || end > data_size) {
        return TensorError(
            path, name,
            absl::StrCat("data_offsets [", begin, ", ", end, "] out of range: the data area holds ",
                         data_size, " bytes (file truncated?)"));
      }
      const uint64_t want = numel * DTypeSize(t.dtype);
      if (end - begin != want) {
        return TensorError(path, name,
                           absl::StrCat("holds ", end - begin, " bytes but shape ", shape.dump(),
                                        " x ", DTypeName(t.dtype), " needs ", want));
      }
      t.data = data + begin;
      t.nbytes = want;
      auto [pos, inserted] = f->tensors_.emplace(name, std::move(t));
      if (!inserted) return TensorError(path, name, "appears twice");
      if (end > begin) ranges.push_back({begin, end, &pos->first});
    }
  } catch (const Json::exception& e) {
    return FileError(path, absl::StrCat("bad header: ", e.what()));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return TensorError(path, *ranges[i].name,
                         absl::StrCat("overlaps tensor '", *ranges[i - 1].name, "'"));
    }
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

absl::Status SafetensorsCheckpoint::AddFile(std::unique_ptr<SafetensorsFile> file) {
  for (const std::string& name : file->names()) {
    const TensorView* t = file->Find(name);
    auto [it, inserted] = index_.emplace(name, t);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' appears in both '", it->second->file, "' and '", file->path(), "'"));
    }
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string target = path;
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    const fs::path single = fs::path(path) / "model.safetensors";
    if (fs::exists(index, ec)) {
      target = index.string();
    } else if (fs::exists(single, ec)) {
      target = single.string();
    } else {
      return absl::NotFoundError(
          absl::StrCat("no model.safetensors.index.json or model.safetensors in '", path, "'"));
    }
  }
  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->source_ = target;
  const bool is_index = target.size() >= 5 && target.compare(target.size() - 5, 5, ".json") == 0;
  if (!is_index) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(target));
    RETURN_IF_ERROR(ckpt->AddFile(std::move(file)));
    return ckpt;
  }

  std::ifstream in(target, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", target, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  Json j;
  try {
    j = Json::parse(ss.str());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("'", target, "': invalid JSON: ", e.what()));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", target, "': field 'weight_map' is missing or not an object"));
  }
  const fs::path dir = fs::path(target).parent_path();
  std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensor names
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", target, "': weight_map entry '", it.key(), "' is not a file name"));
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") {
      return absl::InvalidArgumentError(absl::StrCat("'", target, "': weight_map entry '", it.key(),
                                                     "' names a bad shard '", shard, "'"));
    }
    by_shard[shard].push_back(it.key());
  }
  for (const auto& [shard, tensors] : by_shard) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((dir / shard).string()));
    for (const std::string& name : tensors) {
      if (file->Find(name) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("'", target, "' maps tensor '", name,
                                                       "' to '", shard, "', which lacks it"));
      }
    }
    RETURN_IF_ERROR(ckpt->AddFile(std::move(file)));
  }
  return ckpt;
}

const TensorView* SafetensorsCheckpoint::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

}  // namespace kvc
