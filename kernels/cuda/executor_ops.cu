// Executor helper kernels (see executor_ops_params.h): row gather and KV slot moves.
//   GatherRowsKernel  grid (rows), 128 threads: 16-byte chunks of one output row.
//   MoveKvSlotsKernel grid (num_moves), 64 threads: 16-byte chunks of the K and V rows of one
//                     move; thread 0 also copies score and position.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/executor_ops_launch.h"

namespace kvc::kernels::internal {
namespace {

__global__ void __launch_bounds__(128) GatherRowsKernel(const __grid_constant__ GatherRowsParams p,
                                                        int64_t src_stride, int64_t out_stride) {
  const int r = blockIdx.x;
  const int32_t idx = p.index[r];
  const bool valid = idx >= 0 && idx < p.src_rows;
  const uint4* src = reinterpret_cast<const uint4*>(p.src + (valid ? idx * src_stride : 0));
  uint4* out = reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(r) * out_stride);
  const int chunks = p.dim / 8;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    out[c] = valid ? __ldg(src + c) : make_uint4(0, 0, 0, 0);
  }
}

__global__ void __launch_bounds__(64) MoveKvSlotsKernel(const __grid_constant__ KvMoveParams p) {
  const int m = blockIdx.x;
  const int64_t slots = p.cache.num_blocks * p.cache.block_size;
  const int64_t src = p.src_slots[m];
  const int64_t dst = p.dst_slots[m];
  if (src < 0 || src >= slots || dst < 0 || dst >= slots || src == dst) return;
  const int d = p.cache.head_dim;
  const int chunks = d / 8;
  for (int item = threadIdx.x; item < 2 * chunks; item += blockDim.x) {
    const bool is_v = item >= chunks;
    const int c = is_v ? item - chunks : item;
    Bf16* base = is_v ? p.cache.v : p.cache.k;
    const uint4 v = *reinterpret_cast<const uint4*>(base + src * d + c * 8);
    *reinterpret_cast<uint4*>(base + dst * d + c * 8) = v;
  }
  if (threadIdx.x == 0) {
    p.cache.scores[dst] = p.cache.scores[src];
    p.cache.positions[dst] = p.cache.positions[src];
  }
}

}  // namespace

cudaError_t LaunchGatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t ss = p.src_stride ? p.src_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  GatherRowsKernel<<<p.rows, 128, 0, stream>>>(p, ss, os);
  return cudaGetLastError();
}

cudaError_t LaunchMoveKvSlots(const KvMoveParams& p, cudaStream_t stream) {
  if (p.num_moves == 0) return cudaSuccess;
  MoveKvSlotsKernel<<<p.num_moves, 64, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
