// KV-Compress prefill scores from the last w queries (see params.h, WindowScoreParams).
//
//   1. WindowProbKernel grid (S*H, ceil(max_n / 64)), 4 warps. Each warp owns 16 KVs of head
//      (s, h): loads their K rows once into registers, then loops over the w' x G window rows
//      (packed row = query * G + j, as in prefill) 16 at a time: logits on tensor cores,
//      p = exp2(logit - lse2) with the prefill LSE, and accumulates p^2 per (KV, query head j).
//      Lanes holding the same j are then summed with shuffles; A_j(k) goes to the workspace.
//      Nothing of size w x n is ever stored, and K is read once per KV head.
//   2. WindowPoolKernel grid (S*H, ceil(max_n / 128)): scores[slot(k)] +=
//      sum_j max_{|k' - k| <= pool/2, 0 <= k' < n} A_j(k').
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKvsPerCta = kWarps * 16;
constexpr int kPoolThreads = 128;

struct WindowArgs {
  WindowScoreParams p;
  int group;
  int log2b;
  float scale_log2;
  int64_t q_stride;
  float* a;  // [S*H*G, max_num_kvs]
};

template <int D>
__global__ void __launch_bounds__(kThreads) WindowProbKernel(const __grid_constant__ WindowArgs a) {
  constexpr int kJ = D / 32;
  const WindowScoreParams& p = a.p;
  const int sh = blockIdx.x;
  const int n = min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
  const int warp = threadIdx.x >> 5;
  const int kv0 = blockIdx.y * kKvsPerCta + warp * 16;
  if (kv0 >= n) return;  // whole warp
  const int H = p.tables.num_kv_heads;
  const int G = a.group;
  const int s = sh / H;
  const int h = sh - s * H;
  const int q_end = __ldg(p.cu_q + s + 1);
  const int wq = min(p.window, q_end - __ldg(p.cu_q + s));
  const int rows = wq * G;
  const int first = q_end - wq;
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);
  const int lane = threadIdx.x & 31;
  const int grp = lane >> 2;
  const int t = lane & 3;

  const int col_lane = lane & 15;
  const int kvc = kv0 + col_lane;
  const int64_t slot_c = kvc < n ? PhysSlot(list, kvc, a.log2b) : -1;
  const int pos_c = slot_c >= 0 ? __ldg(p.cache.positions + slot_c) : INT_MAX;
  const int64_t s0 = __shfl_sync(kFullMask, slot_c, grp);
  const int64_t s1 = __shfl_sync(kFullMask, slot_c, grp + 8);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 kf[2][kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int off = (j * 4 + t) * 8;
    kf[0][j] = s0 >= 0 ? Load16(p.cache.k + s0 * D + off) : zero;
    kf[1][j] = s1 >= 0 ? Load16(p.cache.k + s1 * D + off) : zero;
  }
  int cpos[4];
  bool cvalid[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int col = (c >> 1) * 8 + 2 * t + (c & 1);
    cpos[c] = __shfl_sync(kFullMask, pos_c, col);
    cvalid[c] = kv0 + col < n;
  }

  float asq[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // this lane's j = grp % G, columns as cpos
  for (int rb = 0; rb < rows; rb += 16) {
    int qpos[2];
    float lse2[2];
    uint4 qf[2][kJ];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = rb + grp + r * 8;
      const bool ok = row < rows;
      const int tok = first + (ok ? row / G : 0);
      const int qh = h * G + (ok ? row % G : 0);
      const float lse =
          ok ? __ldg(p.lse + static_cast<int64_t>(tok) * p.num_q_heads + qh) : kNegInf;
      // A row that saw nothing (lse = -inf) or is padding contributes nothing.
      qpos[r] = ok && lse != kNegInf ? __ldg(p.q_positions + tok) : INT_MIN;
      lse2[r] = lse * kLog2e;
      const Bf16* qrow = p.q + tok * a.q_stride + static_cast<int64_t>(qh) * D;
#pragma unroll
      for (int j = 0; j < kJ; ++j) qf[r][j] = ok ? Load16(qrow + (j * 4 + t) * 8) : zero;
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
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int nt = c >> 1;
      const int e = c & 1;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (cvalid[c] && cpos[c] <= qpos[r]) {
          const float pr = exp2f(acc[nt][r * 2 + e] * a.scale_log2 - lse2[r]);
          asq[c] += pr * pr;
        }
      }
    }
  }
  // Sum over the lanes that hold the same (t, j): they differ in the bits of grp >= log2(G).
  for (int off = 4 * G; off < 32; off <<= 1) {
#pragma unroll
    for (int c = 0; c < 4; ++c) asq[c] += __shfl_xor_sync(kFullMask, asq[c], off);
  }
  if (grp < G) {
    float* arow = a.a + (static_cast<int64_t>(sh) * G + grp) * p.tables.max_num_kvs;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int kv = kv0 + (c >> 1) * 8 + 2 * t + (c & 1);
      if (kv < n) arow[kv] = asq[c];
    }
  }
}

__global__ void __launch_bounds__(kPoolThreads)
    WindowPoolKernel(const __grid_constant__ WindowArgs a) {
  const WindowScoreParams& p = a.p;
  const int sh = blockIdx.x;
  const int n = min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
  const int k = blockIdx.y * kPoolThreads + threadIdx.x;
  if (k >= n) return;
  const int pad = p.pool_kernel > 1 ? p.pool_kernel / 2 : 0;
  const int lo = max(0, k - pad);
  const int hi = min(n - 1, k + pad);
  float total = 0.0f;
  for (int j = 0; j < a.group; ++j) {
    const float* arow = a.a + (static_cast<int64_t>(sh) * a.group + j) * p.tables.max_num_kvs;
    float mx = arow[lo];
    for (int i = lo + 1; i <= hi; ++i) mx = fmaxf(mx, arow[i]);
    total += mx;
  }
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);
  p.cache.scores[PhysSlot(list, k, a.log2b)] += total;
}

}  // namespace

template <int kHeadDim>
cudaError_t LaunchWindowScores(const WindowScoreParams& p, cudaStream_t stream) {
  const int heads = p.tables.num_seqs * p.tables.num_kv_heads;
  if (heads == 0 || p.tables.max_num_kvs == 0) return cudaSuccess;
  WindowArgs a;
  a.p = p;
  a.group = p.num_q_heads / p.tables.num_kv_heads;
  a.log2b = Log2Pow2(p.cache.block_size);
  a.scale_log2 = p.scale * kLog2e;
  a.q_stride = p.q_stride ? p.q_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  a.a = static_cast<float*>(p.workspace);
  WindowProbKernel<kHeadDim>
      <<<dim3(heads, CeilDiv(p.tables.max_num_kvs, kKvsPerCta)), kThreads, 0, stream>>>(a);
  WindowPoolKernel<<<dim3(heads, CeilDiv(p.tables.max_num_kvs, kPoolThreads)), kPoolThreads, 0,
                     stream>>>(a);
  return cudaGetLastError();
}

template cudaError_t LaunchWindowScores<64>(const WindowScoreParams&, cudaStream_t);
template cudaError_t LaunchWindowScores<128>(const WindowScoreParams&, cudaStream_t);

}  // namespace kvc::kernels::internal
