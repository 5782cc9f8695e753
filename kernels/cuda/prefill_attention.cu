// Prefill attention (flash-style, causal by stored position, varlen, GQA) over per-head pages.
// See params.h for the contract and docs/design/kernels.md for the design.
//
// Grid (S*H, row tiles), 4 warps. The query rows of head (s, h) are its tokens x the G query
// heads of the group, packed row = token * G + g, so the G heads share every K/V load. Each warp
// owns 16 rows and walks the head's KVs in 16-KV tiles: K/V rows straight from the pages into
// registers (16-byte loads), S = Q K^T and O += P V on tensor cores (mma.sync m16n8k16, bf16 in,
// fp32 accumulate; V transposed in registers), online softmax in the log2 domain. A tile whose
// smallest stored position is newer than every query of the warp is skipped before its K/V are
// loaded (slot order need not be position order: compaction reorders slots).
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerCta = kWarps * 16;

struct PrefillArgs {
  PrefillAttentionParams p;
  int group;
  int log2b;
  float scale_log2;
  int64_t q_stride;
  int64_t out_stride;
};

template <int D>
__global__ void __launch_bounds__(kThreads) PrefillKernel(const __grid_constant__ PrefillArgs a) {
  constexpr int kJ = D / 32;
  const PrefillAttentionParams& p = a.p;
  const int sh = blockIdx.x;
  const int H = p.tables.num_kv_heads;
  const int G = a.group;
  const int s = sh / H;
  const int h = sh - s * H;
  const int q_begin = __ldg(p.cu_q + s);
  const int rows = (__ldg(p.cu_q + s + 1) - q_begin) * G;
  const int warp = threadIdx.x >> 5;
  const int row_base = blockIdx.y * kRowsPerCta + warp * 16;
  if (row_base >= rows) return;  // whole warp; no block-level barrier in this kernel
  const int lane = threadIdx.x & 31;
  const int grp = lane >> 2;
  const int t = lane & 3;
  const int n = min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);

  // Rows a (grp) and b (grp + 8) of this warp's 16.
  int tok[2];
  int qh[2];
  int qpos[2];
  bool ok[2];
  uint4 qf[2][kJ];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_base + grp + r * 8;
    ok[r] = row < rows;
    tok[r] = q_begin + (ok[r] ? row / G : 0);
    qh[r] = h * G + (ok[r] ? row % G : 0);
    qpos[r] = ok[r] ? __ldg(p.q_positions + tok[r]) : INT_MIN;
    const Bf16* qrow = p.q + tok[r] * a.q_stride + static_cast<int64_t>(qh[r]) * D;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      qf[r][j] = ok[r] ? Load16(qrow + (j * 4 + t) * 8) : make_uint4(0, 0, 0, 0);
    }
  }
  const int warp_max_qpos = __reduce_max_sync(kFullMask, max(qpos[0], qpos[1]));

  float m[2] = {kNegInf, kNegInf};
  float l[2] = {0.0f, 0.0f};
  float o[kJ][4][4];
#pragma unroll
  for (int j = 0; j < kJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e][0] = o[j][e][1] = o[j][e][2] = o[j][e][3] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int col_lane = lane & 15;
  for (int kv0 = 0; kv0 < n; kv0 += 16) {
    // Lane c (and c + 16) looks up column kv0 + c: its page row and stored position.
    const int kvc = kv0 + col_lane;
    const int64_t slot_c = kvc < n ? PhysSlot(list, kvc, a.log2b) : -1;
    const int pos_c = slot_c >= 0 ? __ldg(p.cache.positions + slot_c) : INT_MAX;
    if (__reduce_min_sync(kFullMask, pos_c) > warp_max_qpos) continue;  // nothing visible

    const int64_t s0 = __shfl_sync(kFullMask, slot_c, grp);
    const int64_t s1 = __shfl_sync(kFullMask, slot_c, grp + 8);
    uint4 kf[2][kJ];
    uint4 vf[2][kJ];
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int off = (j * 4 + t) * 8;
      kf[0][j] = s0 >= 0 ? Load16(p.cache.k + s0 * D + off) : zero;
      kf[1][j] = s1 >= 0 ? Load16(p.cache.k + s1 * D + off) : zero;
    }
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int off = (j * 4 + t) * 8;
      vf[0][j] = s0 >= 0 ? Load16(p.cache.v + s0 * D + off) : zero;
      vf[1][j] = s1 >= 0 ? Load16(p.cache.v + s1 * D + off) : zero;
    }
    float acc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        Mma(acc[nt], qf[0][j].x, qf[1][j].x, qf[0][j].y, qf[1][j].y, kf[nt][j].x, kf[nt][j].y);
        Mma(acc[nt], qf[0][j].z, qf[1][j].z, qf[0][j].w, qf[1][j].w, kf[nt][j].z, kf[nt][j].w);
      }
    }
    // Mask by position; sv[r][nt*2 + e] = logit of row r, column nt*8 + 2t + e (log2 domain).
    float sv[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = nt * 8 + 2 * t + e;
        const int pos = __shfl_sync(kFullMask, pos_c, col);
        const bool valid = kv0 + col < n;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          sv[r][nt * 2 + e] = valid && pos <= qpos[r] ? acc[nt][r * 2 + e] * a.scale_log2 : kNegInf;
        }
      }
    const float alpha0 = OnlineSoftmaxStep(sv[0], m[0], l[0]);
    const float alpha1 = OnlineSoftmaxStep(sv[1], m[1], l[1]);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        o[j][e][0] *= alpha0;
        o[j][e][1] *= alpha0;
        o[j][e][2] *= alpha1;
        o[j][e][3] *= alpha1;
      }
    const uint32_t pa0 = PackBf16x2(sv[0][0], sv[0][1]);
    const uint32_t pa1 = PackBf16x2(sv[1][0], sv[1][1]);
    const uint32_t pa2 = PackBf16x2(sv[0][2], sv[0][3]);
    const uint32_t pa3 = PackBf16x2(sv[1][2], sv[1][3]);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t b0 = TransposeBf16x8x8(Component(vf[0][j], e));
        const uint32_t b1 = TransposeBf16x8x8(Component(vf[1][j], e));
        Mma(o[j][e], pa0, pa1, pa2, pa3, b0, b1);
      }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lr = QuadSum(l[r]);
    if (!ok[r]) continue;
    const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
    Bf16* orow = p.out + tok[r] * a.out_stride + static_cast<int64_t>(qh[r]) * D;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      uint4 v;
      v.x = PackBf16x2(o[j][0][r * 2] * inv, o[j][0][r * 2 + 1] * inv);
      v.y = PackBf16x2(o[j][1][r * 2] * inv, o[j][1][r * 2 + 1] * inv);
      v.z = PackBf16x2(o[j][2][r * 2] * inv, o[j][2][r * 2 + 1] * inv);
      v.w = PackBf16x2(o[j][3][r * 2] * inv, o[j][3][r * 2 + 1] * inv);
      Store16(orow + (j * 4 + t) * 8, v);
    }
    if (p.lse != nullptr && t == 0) {
      p.lse[static_cast<int64_t>(tok[r]) * p.num_q_heads + qh[r]] =
          lr > 0.0f ? (m[r] + log2f(lr)) * kLn2 : kNegInf;
    }
  }
}

}  // namespace

template <int kHeadDim>
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream) {
  const int heads = p.tables.num_seqs * p.tables.num_kv_heads;
  const int group = p.num_q_heads / p.tables.num_kv_heads;
  const int tiles = CeilDiv(p.max_q_len * group, kRowsPerCta);
  if (heads == 0 || tiles == 0) return cudaSuccess;
  PrefillArgs a;
  a.p = p;
  a.group = group;
  a.log2b = Log2Pow2(p.cache.block_size);
  a.scale_log2 = p.scale * kLog2e;
  a.q_stride = p.q_stride ? p.q_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  a.out_stride = p.out_stride ? p.out_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  PrefillKernel<kHeadDim><<<dim3(heads, tiles), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template cudaError_t LaunchPrefillAttention<64>(const PrefillAttentionParams&, cudaStream_t);
template cudaError_t LaunchPrefillAttention<128>(const PrefillAttentionParams&, cudaStream_t);

}  // namespace kvc::kernels::internal
