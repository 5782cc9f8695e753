// Internal: workspace layout and raw launcher of the device-side KV-Compress eviction
// (eviction.cu), called by eviction.cc after validation. No Abseil (nvcc includes this file).
#ifndef KVC_KERNELS_CUDA_EVICTION_LAUNCH_H_
#define KVC_KERNELS_CUDA_EVICTION_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/include/kvc/kernels/eviction_params.h"

namespace kvc::kernels::internal {

// Workspace regions (byte offsets, each 256-byte aligned). [0, zeroed) is cleared by a memset at
// the start of every call; the word arrays are written before they are read.
//   hist        uint32 [4][H][256]  per-pass, per-head histograms of the global radix select
//   heads       int32  [4][H]       r, kmax, base (#keys below the prefix range), at (#keys equal
//                                   to the prefix at the last pass)
//   globals     uint32 [64]         [0] threshold prefix, [1] done flag
//   mask        uint32 [H][W]       evicted-slot bitmap of each head (W = ceil(max_num_kvs / 32))
//   hole_rank   int32  [H][W]       holes below n' in the words before this one
//   surv_rank   int32  [H][W]       survivors at slots >= n' in the words before this one
struct KvCompressWorkspaceLayout {
  int64_t hist = 0, heads = 0, globals = 0, zeroed = 0;
  int64_t mask = 0, hole_rank = 0, surv_rank = 0, total = 0;
  int32_t words = 0;
};

inline KvCompressWorkspaceLayout KvCompressWorkspace(int32_t num_heads, int32_t max_num_kvs) {
  auto align = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t h = num_heads > 0 ? num_heads : 0;
  KvCompressWorkspaceLayout w;
  w.words = max_num_kvs > 0 ? (max_num_kvs + 31) / 32 : 0;
  int64_t at = 0;
  w.hist = at;
  at += align(4 * h * 256 * 4);
  w.heads = at;
  at += align(4 * h * 4);
  w.globals = at;
  at += align(64 * 4);
  w.zeroed = at;
  const int64_t words_bytes = align(h * w.words * 4);
  w.mask = at;
  at += words_bytes;
  w.hole_rank = at;
  at += words_bytes;
  w.surv_rank = at;
  at += words_bytes;
  w.total = at;
  return w;
}

// Queues the memsets and kernels of one call (validated Params, evict_blocks > 0,
// max_num_kvs > 0).
cudaError_t LaunchKvCompressEvict(const KvCompressParams& p, cudaStream_t stream);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_CUDA_EVICTION_LAUNCH_H_
