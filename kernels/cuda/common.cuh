// Internal device helpers of the CUDA kernels: bf16 packing, 16-byte loads, the bf16 tensor-core
// MMA (mma.sync m16n8k16, fp32 accumulate), the in-register 8x8 transpose (movmatrix), warp
// reductions and the per-head page lookup. nvcc only; no Abseil.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, lane = 4 * grp + t):
//   A 16x16 row-major, 4 regs of 2 bf16: R0 (row grp,   k 2t..2t+1)  R1 (row grp+8, k 2t..)
//                                        R2 (row grp,   k 2t+8..)   R3 (row grp+8, k 2t+8..)
//   B 16x8  col-major, 2 regs:           R0 (k 2t..2t+1, col grp)   R1 (k 2t+8.., col grp)
//   C 16x8  fp32, 4 regs:                c0,c1 (row grp, col 2t, 2t+1)  c2,c3 (row grp+8, ...)
//
// The dot product over head_dim does not depend on the order of its terms, so the kernels load
// Q and K rows with one 16-byte load per (row, 8 consecutive elements) and feed the mma a
// PERMUTED head dimension: thread t of a row loads elements [(4j + t) * 8, +8) as uint4 {x,y,z,w}
// and uses {x, y} as its (k 2t.., k 2t+8..) pair of k-step 2j and {z, w} for k-step 2j+1. Q (A)
// and K (B) use the same permutation, so every d is paired with itself. For P·V the kv index is
// the reduction axis; V rows are loaded the same way and transposed in registers with movmatrix,
// which makes output column n of n-tile (j, e) the physical element (4j + t') * 8 + 2e + n%2
// with t' = n / 2: thread t ends up holding O[row][(4j + t) * 8 + 0..7] over e = 0..3, i.e. one
// contiguous 16-byte chunk per j, written back with one store.
#ifndef KVC_KERNELS_CUDA_COMMON_CUH_
#define KVC_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/include/kvc/kernels/params.h"

namespace kvc::kernels::internal {

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ const __nv_bfloat16* Bf(const Bf16* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}
__device__ __forceinline__ __nv_bfloat16* Bf(Bf16* p) {
  return reinterpret_cast<__nv_bfloat16*>(p);
}

// Two floats -> one register of two bf16 (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ float2 UnpackBf16x2(uint32_t u) {
  __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162*>(&u);
  return __bfloat1622float2(v);
}

// 16-byte read-only load of 8 bf16 (p 16-byte aligned).
__device__ __forceinline__ uint4 Load16(const Bf16* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}
// 16-byte streaming load (read once: no L1 allocation; the L2 fetches the enclosing 256 bytes,
// i.e. a whole 128-dim bf16 K/V row, in one DRAM request).
__device__ __forceinline__ uint4 LoadStream16(const Bf16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ void Store16(Bf16* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

__device__ __forceinline__ uint32_t Component(const uint4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;  // e is a compile-time constant
}

// D += A * B, full 16-row tile.
__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// D += A * B where rows 8..15 of A are zero (decode: at most 8 query heads a group): only the
// (row grp) registers R0 = a0 and R2 = a2 are given; c2/c3 stay zero and are discarded.
__device__ __forceinline__ void MmaTop(float (&d)[2], uint32_t a0, uint32_t a2, uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "{\n"
      ".reg .f32 z0, z1;\n"
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,z0,z1}, {%2,%3,%4,%3}, {%5,%6}, {%0,%1,%7,%7};\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1])
      : "r"(a0), "r"(0u), "r"(a2), "r"(b0), "r"(b1), "f"(0.0f));
}

// Transpose of an 8x8 bf16 matrix held one register (row grp, cols 2t, 2t+1) per lane.
__device__ __forceinline__ uint32_t TransposeBf16x8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFullMask, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(kFullMask, v, 1);
  return v + __shfl_xor_sync(kFullMask, v, 2);
}

// Row index (block * b + offset) of logical slot i of a head whose block list is `list`.
__device__ __forceinline__ int64_t PhysSlot(const int32_t* list, int32_t i, int log2b) {
  return (static_cast<int64_t>(__ldg(list + (i >> log2b))) << log2b) | (i & ((1 << log2b) - 1));
}

__host__ __device__ __forceinline__ int Log2Pow2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

__host__ __device__ __forceinline__ int CeilDiv(int a, int b) { return (a + b - 1) / b; }

// One step of the online softmax of one query row whose logits (log2 domain, -inf = masked)
// this lane holds in s[4] (the other three lanes of its quad hold the rest of the tile):
// updates the running max m and this lane's partial sum l, turns s into exp weights, and
// returns the factor by which the row's accumulated output must be scaled.
__device__ __forceinline__ float OnlineSoftmaxStep(float (&s)[4], float& m, float& l) {
  float tmax = fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3]));
  tmax = QuadMax(tmax);
  const float m_new = fmaxf(m, tmax);
  const float m_use = m_new == kNegInf ? 0.0f : m_new;  // all masked so far: weights are 0
  const float alpha = exp2f(m - m_use);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s[i] = exp2f(s[i] - m_use);
    sum += s[i];
  }
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_CUDA_COMMON_CUH_
