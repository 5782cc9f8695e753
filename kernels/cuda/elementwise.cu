// Elementwise kernels: RMSNorm (+ fused residual add), RoPE (neox / rotate_half), SwiGLU and a
// deterministic random fill. bf16 storage, fp32 math. See params.h for the contracts.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float BlockSum(float v, float* scratch /* [32] */) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

__device__ __forceinline__ void Unpack8(uint4 u, float (&f)[8]) {
  const uint32_t r[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = UnpackBf16x2(r[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ uint4 Pack8(const float (&f)[8]) {
  return make_uint4(PackBf16x2(f[0], f[1]), PackBf16x2(f[2], f[3]), PackBf16x2(f[4], f[5]),
                    PackBf16x2(f[6], f[7]));
}
// Plain (not read-only-cache) 16-byte load: used where the buffer is written in this kernel.
__device__ __forceinline__ uint4 LoadRw16(const Bf16* p) {
  return *reinterpret_cast<const uint4*>(p);
}

__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const __grid_constant__ RmsNormParams p) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  const int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const int64_t rs = p.residual_stride ? p.residual_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  const Bf16* x = p.x + r * xs;
  Bf16* res = p.residual != nullptr ? p.residual + r * rs : nullptr;
  const int chunks = p.dim / 8;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < chunks; c += kNormThreads) {
    float f[8];
    Unpack8(LoadRw16(x + c * 8), f);
    if (res != nullptr) {
      float rf[8];
      Unpack8(LoadRw16(res + c * 8), rf);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] += rf[i];
      const uint4 stored = Pack8(f);
      Store16(res + c * 8, stored);
      Unpack8(stored, f);  // the norm sees the residual as stored (bf16)
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
  }
  const float inv = rsqrtf(BlockSum(ss, scratch) / p.dim + p.eps);
  const Bf16* src = res != nullptr ? res : x;
  Bf16* out = p.out + r * os;
  for (int c = threadIdx.x; c < chunks; c += kNormThreads) {
    float f[8];
    float w[8];
    Unpack8(LoadRw16(src + c * 8), f);
    Unpack8(Load16(p.weight + c * 8), w);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = w[i] * (f[i] * inv);
    Store16(out + c * 8, Pack8(f));
  }
}

__global__ void RopeKernel(const __grid_constant__ RopeParams p) {
  const int t = blockIdx.x;
  const int half = p.head_dim / 2;
  const float pos = static_cast<float>(__ldg(p.positions + t));
  __nv_bfloat16* row = Bf(p.x) + t * p.stride + p.first_head_offset;
  for (int idx = threadIdx.x; idx < p.num_heads * half; idx += blockDim.x) {
    const int h = idx / half;
    const int i = idx - h * half;
    const float angle = pos * __ldg(p.inv_freq + i);  // one fp32 product, as in transformers
    float sn;
    float cs;
    sincosf(angle, &sn, &cs);
    __nv_bfloat16* x = row + static_cast<int64_t>(h) * p.head_dim;
    const float a = __bfloat162float(x[i]);
    const float b = __bfloat162float(x[i + half]);
    x[i] = __float2bfloat16_rn(a * cs - b * sn);
    x[i + half] = __float2bfloat16_rn(b * cs + a * sn);
  }
}

__global__ void SwiGluKernel(const __grid_constant__ SwiGluParams p) {
  const int64_t gs = p.gate_stride ? p.gate_stride : p.dim;
  const int64_t us = p.up_stride ? p.up_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  const int chunks = p.dim / 8;
  const int64_t total = static_cast<int64_t>(p.rows) * chunks;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / chunks;
    const int c = static_cast<int>(idx - r * chunks);
    float g[8];
    float u[8];
    Unpack8(LoadRw16(p.gate + r * gs + c * 8), g);
    Unpack8(LoadRw16(p.up + r * us + c * 8), u);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    Store16(p.out + r * os + c * 8, Pack8(g));
  }
}

__device__ __forceinline__ uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void FillRandomKernel(const __grid_constant__ FillRandomParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t z = SplitMix64(p.seed * 0x632be59bd9b4e019ull + static_cast<uint64_t>(i));
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    Bf(p.data)[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * p.scale);
  }
}

int GridFor(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  RmsNormKernel<<<p.rows, kNormThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0 || p.num_heads == 0) return cudaSuccess;
  const int work = p.num_heads * p.head_dim / 2;
  const int threads = work >= 256 ? 256 : ((work + 31) / 32) * 32;
  RopeKernel<<<p.num_tokens, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(static_cast<int64_t>(p.rows) * (p.dim / 8), 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchFillRandom(const FillRandomParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  FillRandomKernel<<<GridFor(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
