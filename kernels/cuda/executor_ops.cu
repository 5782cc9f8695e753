// Executor helper kernels (see executor_ops_params.h): row gathers, fp32-residual RMSNorm and
// bias add, KV slot moves.
//   GatherRowsF32Kernel grid (rows), 128 threads: one element per thread-iteration.
//   RmsNormF32Kernel  grid (rows), 256 threads: block-reduced sum of squares, then the row.
//   AddBiasF32Kernel  grid-stride over rows * dim.
//   GatherSlotMetaKernel grid-stride copy of score/position rows of listed blocks.
//   ScatterInt32Kernel   grid-stride (index, value) writes (block-table mirror updates).
//   FillRandomBf16Kernel grid-stride fill of random bf16 weights.
//   MoveKvSlotsKernel grid (num_moves), 64 threads: 16-byte chunks of the K and V rows of one
//                     move; thread 0 also copies score and position.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/executor_ops_launch.h"

namespace kvc::kernels::internal {
namespace {

__device__ __forceinline__ float ToF(const Bf16& b) {
  return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(&b));
}

__global__ void __launch_bounds__(128)
    GatherRowsF32Kernel(const __grid_constant__ GatherRowsF32Params p, int64_t src_stride,
                        int64_t out_stride) {
  const int r = blockIdx.x;
  const int32_t idx = p.index[r];
  const bool valid = idx >= 0 && idx < p.src_rows;
  float* out = p.out + static_cast<int64_t>(r) * out_stride;
  const int64_t base = valid ? idx * src_stride : 0;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = 0.0f;
    if (valid) v = p.src_bf16 != nullptr ? ToF(p.src_bf16[base + i]) : p.src_f32[base + i];
    out[i] = v;
  }
}

__global__ void __launch_bounds__(256) RmsNormF32Kernel(const __grid_constant__ RmsNormF32Params p,
                                                        int64_t x_stride, int64_t out_stride) {
  const int r = blockIdx.x;
  const float* x = p.x + static_cast<int64_t>(r) * x_stride;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) ss += x[i] * x[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float part[8];
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) part[warp] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < 8; ++w) total += part[w];
  const float inv = rsqrtf(total / static_cast<float>(p.dim) + p.eps);
  __nv_bfloat16* out =
      reinterpret_cast<__nv_bfloat16*>(p.out) + static_cast<int64_t>(r) * out_stride;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    out[i] = __float2bfloat16_rn(x[i] * inv * ToF(p.weight[i]));
  }
}

__global__ void AddBiasF32Kernel(const __grid_constant__ AddBiasF32Params p, int64_t x_stride) {
  const int64_t total = static_cast<int64_t>(p.rows) * p.dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.dim;
    const int i = static_cast<int>(idx - r * p.dim);
    p.x[r * x_stride + i] += ToF(p.bias[i]);
  }
}

__global__ void __launch_bounds__(256)
    GatherSlotMetaKernel(const __grid_constant__ GatherSlotMetaParams p) {
  const int32_t bs = p.cache.block_size;
  const int64_t n = static_cast<int64_t>(p.num_blocks) * bs;
  for (int64_t i = blockIdx.x * 256ll + threadIdx.x; i < n; i += 256ll * gridDim.x) {
    const int32_t b = p.blocks[i / bs];
    if (b >= 0 && b < p.cache.num_blocks) {
      const int64_t slot = static_cast<int64_t>(b) * bs + i % bs;
      p.out_scores[i] = p.cache.scores[slot];
      p.out_positions[i] = p.cache.positions[slot];
    } else {
      p.out_scores[i] = __int_as_float(0x7fc00000);
      p.out_positions[i] = -1;
    }
  }
}

__global__ void __launch_bounds__(256) ScatterInt32Kernel(const __grid_constant__ ScatterInt32Params p) {
  for (int32_t i = blockIdx.x * 256 + threadIdx.x; i < p.num_pairs; i += 256 * gridDim.x) {
    const int64_t idx = p.pairs[2 * i];
    if (idx >= 0 && idx < p.out_size) p.out[idx] = p.pairs[2 * i + 1];
  }
}

__global__ void __launch_bounds__(256) FillRandomBf16Kernel(const __grid_constant__ FillRandomBf16Params p) {
  for (int64_t i = blockIdx.x * 256ll + threadIdx.x; i < p.n; i += 256ll * gridDim.x) {
    const __nv_bfloat16 b = __float2bfloat16_rn(FillRandomValue(p.seed, i, p.scale, p.offset));
    p.out[i] = *reinterpret_cast<const Bf16*>(&b);
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

cudaError_t LaunchGatherRowsF32(const GatherRowsF32Params& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t ss = p.src_stride ? p.src_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  GatherRowsF32Kernel<<<p.rows, 128, 0, stream>>>(p, ss, os);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNormF32(const RmsNormF32Params& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  RmsNormF32Kernel<<<p.rows, 256, 0, stream>>>(p, xs, os);
  return cudaGetLastError();
}

cudaError_t LaunchAddBiasF32(const AddBiasF32Params& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const int64_t total = static_cast<int64_t>(p.rows) * p.dim;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 4096));
  AddBiasF32Kernel<<<blocks, 256, 0, stream>>>(p, xs);
  return cudaGetLastError();
}

cudaError_t LaunchGatherSlotMeta(const GatherSlotMetaParams& p, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(p.num_blocks) * p.cache.block_size;
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  GatherSlotMetaKernel<<<blocks, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchScatterInt32(const ScatterInt32Params& p, cudaStream_t stream) {
  const int blocks = std::min((p.num_pairs + 255) / 256, 4096);
  ScatterInt32Kernel<<<blocks, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchFillRandomBf16(const FillRandomBf16Params& p, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((p.n + 255) / 256, 65536);
  FillRandomBf16Kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchMoveKvSlots(const KvMoveParams& p, cudaStream_t stream) {
  if (p.num_moves == 0) return cudaSuccess;
  MoveKvSlotsKernel<<<p.num_moves, 64, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
