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

absl::Status GatherRows(const GatherRowsParams& p, StreamHandle stream) {
  if (p.rows < 0 || p.rows > 2147483647 || p.dim <= 0 || p.dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GatherRows: rows ", p.rows, " / dim ", p.dim,
                                                   " (dim must be a positive multiple of 8)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.src == nullptr || p.out == nullptr || p.index == nullptr) {
    return absl::InvalidArgumentError("GatherRows: src/out/index is null");
  }
  if (!Aligned16(p.src) || !Aligned16(p.out) || p.src_stride % 8 != 0 || p.out_stride % 8 != 0 ||
      p.src_stride < 0 || p.out_stride < 0) {
    return absl::InvalidArgumentError(
        "GatherRows: src/out must be 16-byte aligned with strides that are multiples of 8");
  }
  if (p.src_rows < 0) return absl::InvalidArgumentError("GatherRows: src_rows < 0");
  return FromCuda(internal::LaunchGatherRows(p, Stream(stream)), "GatherRows");
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

}  // namespace kvc::kernels
