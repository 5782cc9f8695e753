// Host side of the executor helper kernels: validation and cudaError_t -> absl::Status.
#include "kernels/include/kvc/kernels/executor_ops.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/executor_ops_launch.h"

namespace kvc::kernels {
namespace {

absl::Status FromCuda(cudaError_t err, const char* kernel) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(kernel, ": CUDA launch failed: ", cudaGetErrorString(err)));
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

cudaStream_t Stream(StreamHandle s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

absl::Status GatherRowsF32(const GatherRowsF32Params& p, StreamHandle stream) {
  if (p.rows < 0 || p.dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GatherRowsF32: rows ", p.rows, " / dim ", p.dim, " out of range"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if ((p.src_bf16 == nullptr) == (p.src_f32 == nullptr)) {
    return absl::InvalidArgumentError("GatherRowsF32: set exactly one of src_bf16 / src_f32");
  }
  if (p.out == nullptr || p.index == nullptr) {
    return absl::InvalidArgumentError("GatherRowsF32: out/index is null");
  }
  if (p.src_stride < 0 || p.out_stride < 0 || p.src_rows < 0) {
    return absl::InvalidArgumentError("GatherRowsF32: negative stride or src_rows");
  }
  return FromCuda(internal::LaunchGatherRowsF32(p, Stream(stream)), "GatherRowsF32");
}

absl::Status RmsNormF32(const RmsNormF32Params& p, StreamHandle stream) {
  if (p.rows < 0 || p.dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNormF32: rows ", p.rows, " / dim ", p.dim, " out of range"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.x == nullptr || p.weight == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("RmsNormF32: x/weight/out is null");
  }
  if (p.x_stride < 0 || p.out_stride < 0) {
    return absl::InvalidArgumentError("RmsNormF32: negative stride");
  }
  return FromCuda(internal::LaunchRmsNormF32(p, Stream(stream)), "RmsNormF32");
}

absl::Status AddBiasF32(const AddBiasF32Params& p, StreamHandle stream) {
  if (p.rows < 0 || p.dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddBiasF32: rows ", p.rows, " / dim ", p.dim, " out of range"));
  }
  if (p.rows == 0 || p.dim == 0) return absl::OkStatus();
  if (p.x == nullptr || p.bias == nullptr) {
    return absl::InvalidArgumentError("AddBiasF32: x/bias is null");
  }
  if (p.x_stride < 0) return absl::InvalidArgumentError("AddBiasF32: negative stride");
  return FromCuda(internal::LaunchAddBiasF32(p, Stream(stream)), "AddBiasF32");
}

absl::Status MoveKvSlots(const KvMoveParams& p, StreamHandle stream) {
  const PagedKvCache& c = p.cache;
  if (p.num_moves < 0) return absl::InvalidArgumentError("MoveKvSlots: num_moves < 0");
  if (p.num_moves == 0) return absl::OkStatus();
  if (c.head_dim <= 0 || c.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoveKvSlots: cache.head_dim ", c.head_dim, " must be a multiple of 8"));
  }
  if (c.block_size <= 0 || c.num_blocks <= 0) {
    return absl::InvalidArgumentError("MoveKvSlots: cache.block_size/num_blocks must be > 0");
  }
  if (c.k == nullptr || c.v == nullptr || c.scores == nullptr || c.positions == nullptr ||
      !Aligned16(c.k) || !Aligned16(c.v)) {
    return absl::InvalidArgumentError(
        "MoveKvSlots: cache.k/v/scores/positions is null or k/v is not 16-byte aligned");
  }
  if (p.src_slots == nullptr || p.dst_slots == nullptr) {
    return absl::InvalidArgumentError("MoveKvSlots: src_slots/dst_slots is null");
  }
  return FromCuda(internal::LaunchMoveKvSlots(p, Stream(stream)), "MoveKvSlots");
}

absl::Status GatherSlotMeta(const GatherSlotMetaParams& p, StreamHandle stream) {
  if (p.num_blocks < 0) return absl::InvalidArgumentError("GatherSlotMeta: num_blocks < 0");
  if (p.num_blocks == 0) return absl::OkStatus();
  if (p.blocks == nullptr || p.out_scores == nullptr || p.out_positions == nullptr ||
      p.cache.scores == nullptr || p.cache.positions == nullptr || p.cache.block_size <= 0) {
    return absl::InvalidArgumentError("GatherSlotMeta: null pointer or bad block_size");
  }
  return FromCuda(internal::LaunchGatherSlotMeta(p, Stream(stream)), "GatherSlotMeta");
}

absl::Status ScatterInt32(const ScatterInt32Params& p, StreamHandle stream) {
  if (p.num_pairs < 0 || p.out_size < 0) {
    return absl::InvalidArgumentError("ScatterInt32: num_pairs / out_size < 0");
  }
  if (p.num_pairs == 0) return absl::OkStatus();
  if (p.out == nullptr || p.pairs == nullptr) {
    return absl::InvalidArgumentError("ScatterInt32: out/pairs is null");
  }
  return FromCuda(internal::LaunchScatterInt32(p, Stream(stream)), "ScatterInt32");
}

absl::Status FillRandomBf16(const FillRandomBf16Params& p, StreamHandle stream) {
  if (p.n < 0) return absl::InvalidArgumentError(absl::StrCat("FillRandomBf16: n ", p.n, " < 0"));
  if (p.n == 0) return absl::OkStatus();
  if (p.out == nullptr) return absl::InvalidArgumentError("FillRandomBf16: out is null");
  return FromCuda(internal::LaunchFillRandomBf16(p, Stream(stream)), "FillRandomBf16");
}

}  // namespace kvc::kernels
