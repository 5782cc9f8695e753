// Parameter structs of the CUDA executor's helper kernels (row gather, KV slot moves). POD only:
// nvcc includes this header (no Abseil, no CUDA types). The entry points are in executor_ops.h.
//
// Ownership: every pointer is a caller-owned DEVICE pointer; a kernel only touches it during the
// launch on the given stream. bf16 rows must be 16-byte aligned (pointer % 16 == 0, stride % 8
// == 0, dim % 8 == 0).
#ifndef KVC_KERNELS_EXECUTOR_OPS_PARAMS_H_
#define KVC_KERNELS_EXECUTOR_OPS_PARAMS_H_

#include <cstdint>

#include "kernels/include/kvc/kernels/params.h"

namespace kvc::kernels {

// out[i, :dim] = float(src[index[i], :dim]) into an fp32 buffer; src is bf16 (src_bf16, e.g. the
// embedding table) or fp32 (src_f32, e.g. the residual stream): exactly one is set. An index
// outside [0, src_rows) gives a row of zeros.
struct GatherRowsF32Params {
  int32_t rows = 0;
  int32_t dim = 0;
  const Bf16* src_bf16 = nullptr;
  const float* src_f32 = nullptr;
  int64_t src_stride = 0;  // 0 = dim
  int64_t src_rows = 0;
  const int32_t* index = nullptr;  // [rows]
  float* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
};

// RMSNorm of an fp32 residual stream into a bf16 GEMM input:
//   out[r] = bf16(x[r] / sqrt(mean(x[r]^2) + eps) * weight)   (fp32 math, one rounding)
struct RmsNormF32Params {
  int32_t rows = 0;
  int32_t dim = 0;
  float eps = 1e-6f;
  const float* x = nullptr;
  int64_t x_stride = 0;          // 0 = dim
  const Bf16* weight = nullptr;  // [dim]
  Bf16* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
};

// x[r, i] += float(bias[i]) for an fp32 buffer (biases of GEMMs that accumulate into the fp32
// residual stream).
struct AddBiasF32Params {
  int32_t rows = 0;
  int32_t dim = 0;
  float* x = nullptr;
  int64_t x_stride = 0;        // 0 = dim
  const Bf16* bias = nullptr;  // [dim]
};

// Compaction: for each move m < num_moves, copies K, V, score and position of slot
// src_slots[m] to slot dst_slots[m] (slot = block * block_size + offset). Moves of one launch
// run in parallel, so no move may read a slot that another move of the same launch writes
// (KvManager plans satisfy this; the executor splits dependent lists into several launches).
// Slots outside [0, num_blocks * block_size) are skipped.
struct KvMoveParams {
  PagedKvCache cache;
  int32_t num_moves = 0;
  const int64_t* src_slots = nullptr;  // [num_moves]
  const int64_t* dst_slots = nullptr;  // [num_moves]
};

// Gathers the score and position rows of `num_blocks` blocks (block ids in `blocks`) into
// contiguous out_scores / out_positions [num_blocks, block_size]: one copy brings a sequence's
// eviction metadata to the host. Block ids outside [0, cache.num_blocks) give NaN / -1 rows.
struct GatherSlotMetaParams {
  PagedKvCache cache;
  const int32_t* blocks = nullptr;  // [num_blocks]
  int32_t num_blocks = 0;
  float* out_scores = nullptr;
  int32_t* out_positions = nullptr;
};

// out[pairs[2 i]] = pairs[2 i + 1] for i < num_pairs (index, value) pairs: incremental updates of
// the device mirror of the block tables. Indices outside [0, out_size) are skipped.
struct ScatterInt32Params {
  int32_t* out = nullptr;
  int64_t out_size = 0;
  const int32_t* pairs = nullptr;  // [2 * num_pairs]
  int32_t num_pairs = 0;
};

// Fills out[0, n) with bf16 values offset + scale * u, u uniform in [-1, 1) from a counter-based
// hash of (seed, index): random weights for benchmarks (no host copy of a multi-GB model).
// Deterministic for a (seed, n); the CPU reference is FillRandomValue() below.
struct FillRandomBf16Params {
  Bf16* out = nullptr;
  int64_t n = 0;
  float scale = 0.02f;
  float offset = 0.0f;
  uint64_t seed = 0;
};

// Value element i of a FillRandomBf16 call gets, before rounding to bf16 (host and device).
#if defined(__CUDACC__)
__host__ __device__
#endif
    inline float
    FillRandomValue(uint64_t seed, int64_t i, float scale, float offset) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(i) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * (1.0f / 8388608.0f) - 1.0f;  // [-1, 1)
  return offset + scale * u;
}

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EXECUTOR_OPS_PARAMS_H_
