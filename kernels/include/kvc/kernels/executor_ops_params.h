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

// out[i, :dim] = src[index[i], :dim] for i < rows (embedding lookup, picking the rows that
// return logits). An index outside [0, src_rows) gives a row of zeros (never an out-of-bounds
// read).
struct GatherRowsParams {
  int32_t rows = 0;
  int32_t dim = 0;  // multiple of 8
  const Bf16* src = nullptr;
  int64_t src_stride = 0;  // 0 = dim
  int64_t src_rows = 0;
  const int32_t* index = nullptr;  // [rows]
  Bf16* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
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

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EXECUTOR_OPS_PARAMS_H_
