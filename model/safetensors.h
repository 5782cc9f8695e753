// Read-only, mmap-backed reader of safetensors checkpoints: a single `*.safetensors` file or a
// sharded checkpoint described by `model.safetensors.index.json` (its `weight_map`).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data
// area; offsets are relative to the data area. Opening validates the whole header: header length
// inside the file, every tensor's offsets inside the data area, byte size = numel * dtype size,
// no two tensors overlapping, known dtype. Errors are INVALID_ARGUMENT / DATA_LOSS naming the
// file and the tensor.
//
// Ownership: a SafetensorsFile owns its mapping; TensorView::data points into it and is valid
// while the file (or the checkpoint holding it) lives. Thread-safety: immutable after Open();
// concurrent readers are safe.
#ifndef KVC_MODEL_SAFETENSORS_H_
#define KVC_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc {

enum class DType { kF32, kF16, kBF16, kI32, kI64 };

// "F32", "F16", "BF16", "I32", "I64" (the safetensors spelling).
const char* DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(std::string_view name);
size_t DTypeSize(DType dtype);

// One tensor inside a mapped file.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // little-endian, unaligned in general
  size_t nbytes = 0;
  // The file it came from (for error messages).
  std::string file;

  int64_t numel() const;
  // "[384, 64]"
  std::string ShapeString() const;
};

// Converts a floating tensor (F32, F16, BF16) to fp32 into `out` (out.size() == numel()).
absl::Status CopyToFloat32(const TensorView& t, std::span<float> out);
absl::StatusOr<std::vector<float>> ToFloat32(const TensorView& t);
// Reads an integer tensor (I32, or I64 with every value in int32 range).
absl::StatusOr<std::vector<int32_t>> ToInt32(const TensorView& t);

// bf16 / f16 <-> f32 helpers (round-to-nearest-even on the way down).
float Bf16ToFloat(uint16_t v);
float F16ToFloat(uint16_t v);
uint16_t FloatToBf16(float f);
uint16_t FloatToF16(float f);

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;
  // Sorted tensor names.
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: one file, or the shards of an index. Tensor names are unique across shards.
class SafetensorsCheckpoint {
 public:
  // `path` is a .safetensors file, a model.safetensors.index.json, or a directory holding
  // model.safetensors.index.json (preferred) or model.safetensors.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  const TensorView* Find(std::string_view name) const;
  std::vector<std::string> names() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // The file or index it was opened from (for error messages).
  const std::string& source() const { return source_; }

 private:
  SafetensorsCheckpoint() = default;
  absl::Status AddFile(std::unique_ptr<SafetensorsFile> file);

  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> index_;
};

}  // namespace kvc

#endif  // KVC_MODEL_SAFETENSORS_H_
