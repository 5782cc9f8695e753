// Paged decode attention over per-head block tables (+ decode scores). See params.h for the
// contract and docs/design/kernels.md for the design.
//
// Kernels, in stream order:
//   1. DecodeSplitKernel   grid (S*H, splits), 4 warps. CTA (head, split) walks its chunk of
//      the head's KVs in 16-KV tiles (warp w takes tiles w, w+4, ...). Each tile: K and V rows
//      straight from the pages into registers (16-byte loads), logits of the G <= 8 query heads
//      with one tensor-core MMA per 16 KV x 16 dims (G query rows of 16; rows G.. are zero),
//      online softmax, P·V with V transposed in registers. Warps merge through shared memory.
//      splits == 1: writes out/lse and, with accumulate_scores, adds its head's decode scores
//      itself (it knows the final LSE after the merge); else: per-split partial (O/L, max, sum)
//      to the workspace.
//   2. splits > 1, without scores: DecodeCombineKernel grid (S*H, G) merges the partials and
//      writes out/lse. With scores: DecodeCombineScoreKernel grid (S*H, max(splits, G)): CTA
//      (head, y) merges query head y (y < G) like the combine, derives the final LSE of all G
//      query heads from the partials' (max, sum) and adds the decode scores of chunk y.
//
// Decode scores: scores[slot] += sum_g exp2(2 (logit_g - lse2_g)), from the scaled log2 logits
// that kernel 1 stores to the workspace ([head][split][g][chunk]) and the final log2 LSE.
// Each slot belongs to exactly one CTA: no atomics, no clear. (Per-lane float2 logit stores
// were tried: they raised the split kernel to 184 registers, 2 CTAs per SM.)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;  // KVs per warp iteration
constexpr int kMaxGroup = 8;

struct DecodeArgs {
  DecodeAttentionParams p;
  int group;
  int log2b;
  float scale_log2;
  int64_t q_stride;
  int64_t out_stride;
  float* part_o;    // [S*H*splits*G, D]
  float* part_ml;   // [S*H*splits*G, 2]
  float* logits;    // [S*H*splits*G, chunk]
  bool vec_scores;  // cache.scores is 16-byte aligned: float4 read-modify-write of a quad
};

__device__ __forceinline__ int HeadLength(const DecodeAttentionParams& p, int sh) {
  return min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
}

// Log2-domain LSE of a row from its merged (max, sum); -inf for an empty row.
__device__ __forceinline__ float Lse2(float m, float l) {
  return l > 0.0f ? m + log2f(l) : kNegInf;
}

// Writes the final output row of query head (sh, g) element d, and its LSE once per row.
template <int D>
__device__ __forceinline__ void WriteFinal(const DecodeArgs& a, int sh, int g, int d, float o,
                                           float m, float l) {
  const DecodeAttentionParams& p = a.p;
  const int H = p.tables.num_kv_heads;
  const int s = sh / H;
  const int qh = (sh - s * H) * a.group + g;
  p.out[s * a.out_stride + static_cast<int64_t>(qh) * D + d] =
      Bf16{__bfloat16_as_ushort(__float2bfloat16_rn(l > 0.0f ? o / l : 0.0f))};
  if (d == 0 && p.lse != nullptr) {
    p.lse[static_cast<int64_t>(s) * p.num_q_heads + qh] = Lse2(m, l) * kLn2;
  }
}

// scores[slot(i)] += sum_{g < G} exp2(2 (logits[g * chunk + i - c0] - lse2[g])) for the KVs
// i in [c0, c1) of one head (c0 a multiple of 16; lse2 in shared memory). The whole CTA calls
// it. Thread x takes the quads 4 (x + k * kThreads) + {0..3}; a quad lies in one page (block
// size >= 8), so it costs one float4 per query head, one page lookup and one float4
// read-modify-write of scores. kQ quads per iteration, all their loads issued before any math
// (the latency of the dependent page lookup -> scores load is what bounds this loop). The < 4
// KVs after the last full quad go one per thread (the logits past c1 were never written and
// are never read).
// kG: the group size, or an upper bound of the runtime group size G (query heads g >= G are
// skipped).
template <int kG, int kQ>
__device__ __forceinline__ void ScoreQuads(const DecodeArgs& a, const int32_t* list,
                                           const float* logits, int c0, int c1, const float* lse2,
                                           int G) {
  const int chunk = a.p.chunk_size;
  float* const scores = a.p.cache.scores;
  float l2[kG];
#pragma unroll
  for (int g = 0; g < kG; ++g) l2[g] = g < G ? lse2[g] : 0.0f;
  const int quads = (c1 - c0) >> 2;
  for (int q0 = threadIdx.x; q0 < quads; q0 += kQ * kThreads) {
    float4 x[kQ][kG];
    float4 sc[kQ];
    int64_t slot[kQ];
#pragma unroll
    for (int u = 0; u < kQ; ++u) {
      const int q = q0 + u * kThreads;
      slot[u] = q < quads ? PhysSlot(list, c0 + 4 * q, a.log2b) : -1;
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        x[u][g] = g < G && q < quads ? *reinterpret_cast<const float4*>(logits + g * chunk + 4 * q)
                                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
#pragma unroll
    for (int u = 0; u < kQ; ++u) {
      const float* sp = scores + max(slot[u], int64_t{0});
      if (slot[u] < 0) {
        sc[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      } else if (a.vec_scores) {
        sc[u] = *reinterpret_cast<const float4*>(sp);
      } else {
        sc[u] = make_float4(sp[0], sp[1], sp[2], sp[3]);
      }
    }
#pragma unroll
    for (int u = 0; u < kQ; ++u) {
      if (slot[u] < 0) continue;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        if (g < G) {
          sum.x += exp2f(2.0f * (x[u][g].x - l2[g]));
          sum.y += exp2f(2.0f * (x[u][g].y - l2[g]));
          sum.z += exp2f(2.0f * (x[u][g].z - l2[g]));
          sum.w += exp2f(2.0f * (x[u][g].w - l2[g]));
        }
      }
      const float4 r =
          make_float4(sc[u].x + sum.x, sc[u].y + sum.y, sc[u].z + sum.z, sc[u].w + sum.w);
      float* const sp = scores + slot[u];
      if (a.vec_scores) {
        *reinterpret_cast<float4*>(sp) = r;
      } else {
        sp[0] = r.x;
        sp[1] = r.y;
        sp[2] = r.z;
        sp[3] = r.w;
      }
    }
  }
  const int i = c0 + 4 * quads + static_cast<int>(threadIdx.x);
  if (threadIdx.x < 4 && i < c1) {
    float sum = 0.0f;
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      if (g < G) sum += exp2f(2.0f * (logits[g * chunk + (i - c0)] - l2[g]));
    }
    scores[PhysSlot(list, i, a.log2b)] += sum;
  }
}

// ScoreQuads for the group size (1, 2, 4 or 8: validated), with kQ1 / kQ2 / kQ4 / kQ8 quads
// in flight per thread (a quad holds 4G + 6 registers: logits, scores, slot).
template <int kQ1, int kQ2, int kQ4, int kQ8>
__device__ __forceinline__ void AccumulateChunkScores(const DecodeArgs& a, const int32_t* list,
                                                      const float* logits, int c0, int c1,
                                                      const float* lse2) {
  switch (a.group) {
    case 1:
      ScoreQuads<1, kQ1>(a, list, logits, c0, c1, lse2, 1);
      break;
    case 2:
      ScoreQuads<2, kQ2>(a, list, logits, c0, c1, lse2, 2);
      break;
    case 4:
      ScoreQuads<4, kQ4>(a, list, logits, c0, c1, lse2, 4);
      break;
    default:
      ScoreQuads<8, kQ8>(a, list, logits, c0, c1, lse2, 8);
      break;
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads)
    DecodeSplitKernel(const __grid_constant__ DecodeArgs a) {
  constexpr int kJ = D / 32;  // 16-byte chunks per lane per row
  const DecodeAttentionParams& p = a.p;
  const int sh = blockIdx.x;
  const int split = blockIdx.y;
  const int n = HeadLength(p, sh);
  const int c0 = split * p.chunk_size;
  if (split > 0 && c0 >= n) return;  // unused split (split 0 always runs: it reports n == 0)
  const int c1 = min(n, c0 + p.chunk_size);
  const int H = p.tables.num_kv_heads;
  const int G = a.group;
  const int s = sh / H;
  const int h = sh - s * H;
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int grp = lane >> 2;
  const int t = lane & 3;
  const bool row_ok = grp < G;

  uint4 qf[kJ];
  {
    const Bf16* qrow = p.q + s * a.q_stride + static_cast<int64_t>(h * G + grp) * D;
#pragma unroll
    for (int j = 0; j < kJ; ++j)
      qf[j] = row_ok ? Load16(qrow + (j * 4 + t) * 8) : make_uint4(0, 0, 0, 0);
  }
  // Logits of this CTA's chunk: [g][chunk] from `head_logits`; lane row grp at logit_row[kv].
  const float* head_logits =
      a.logits + (static_cast<int64_t>(sh) * p.num_splits + split) * G * p.chunk_size;
  float* logit_row = nullptr;
  if (p.accumulate_scores && row_ok) {
    logit_row = a.logits +
                ((static_cast<int64_t>(sh) * p.num_splits + split) * G + grp) * p.chunk_size - c0;
  }

  float m = kNegInf;
  float l = 0.0f;
  float o[kJ][4][2];
#pragma unroll
  for (int j = 0; j < kJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e][0] = o[j][e][1] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int kv0 = c0 + warp * kTile; kv0 < c1; kv0 += kWarps * kTile) {
    // This lane loads rows kv0 + grp (n-tile 0) and kv0 + 8 + grp (n-tile 1).
    const int r0 = kv0 + grp;
    const int r1 = r0 + 8;
    const int64_t s0 = r0 < c1 ? PhysSlot(list, r0, a.log2b) : -1;
    const int64_t s1 = r1 < c1 ? PhysSlot(list, r1, a.log2b) : -1;
    uint4 kf[2][kJ];
    uint4 vf[2][kJ];
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int off = (j * 4 + t) * 8;
      kf[0][j] = s0 >= 0 ? LoadStream16(p.cache.k + s0 * D + off) : zero;
      kf[1][j] = s1 >= 0 ? LoadStream16(p.cache.k + s1 * D + off) : zero;
    }
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int off = (j * 4 + t) * 8;
      vf[0][j] = s0 >= 0 ? LoadStream16(p.cache.v + s0 * D + off) : zero;
      vf[1][j] = s1 >= 0 ? LoadStream16(p.cache.v + s1 * D + off) : zero;
    }

    // Logits: row grp (query head), cols kv0 + nt*8 + 2t + {0,1}.
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        MmaTop(acc[nt], qf[j].x, qf[j].y, kf[nt][j].x, kf[nt][j].y);
        MmaTop(acc[nt], qf[j].z, qf[j].w, kf[nt][j].z, kf[nt][j].w);
      }
    float sv[4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int kv = kv0 + nt * 8 + 2 * t + e;
        sv[nt * 2 + e] = kv < c1 ? acc[nt][e] * a.scale_log2 : kNegInf;
        if (logit_row != nullptr && kv < c1) logit_row[kv] = sv[nt * 2 + e];
      }
    const float alpha = OnlineSoftmaxStep(sv, m, l);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        o[j][e][0] *= alpha;
        o[j][e][1] *= alpha;
      }
    // P (row grp, k = kv 2t.. | 2t+8..) as the A operand; V^T tiles as B.
    const uint32_t pa0 = PackBf16x2(sv[0], sv[1]);
    const uint32_t pa2 = PackBf16x2(sv[2], sv[3]);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t b0 = TransposeBf16x8x8(Component(vf[0][j], e));
        const uint32_t b1 = TransposeBf16x8x8(Component(vf[1][j], e));
        MmaTop(o[j][e], pa0, pa2, b0, b1);
      }
  }
  l = QuadSum(l);

  // Merge the warps: each writes its (m, l, O) of its rows; then every thread merges elements.
  __shared__ float s_o[kWarps][kMaxGroup][D];
  __shared__ float s_m[kWarps][kMaxGroup];
  __shared__ float s_l[kWarps][kMaxGroup];
  __shared__ float s_lse2[kMaxGroup];
  if (row_ok) {
    if (t == 0) {
      s_m[warp][grp] = m;
      s_l[warp][grp] = l;
    }
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        *reinterpret_cast<float2*>(&s_o[warp][grp][(j * 4 + t) * 8 + 2 * e]) =
            make_float2(o[j][e][0], o[j][e][1]);
      }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int g = idx / D;
    const int d = idx - g * D;
    float mm = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, s_m[w][g]);
    float ll = 0.0f;
    float oo = 0.0f;
    if (mm != kNegInf) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(s_m[w][g] - mm);
        ll += s_l[w][g] * f;
        oo += s_o[w][g][d] * f;
      }
    }
    if (p.num_splits == 1) {
      WriteFinal<D>(a, sh, g, d, oo, mm, ll);
      if (d == 0) s_lse2[g] = Lse2(mm, ll);
    } else {
      const int64_t row = (static_cast<int64_t>(sh) * p.num_splits + split) * G + g;
      a.part_o[row * D + d] = ll > 0.0f ? oo / ll : 0.0f;
      if (d == 0) {
        a.part_ml[row * 2] = mm;
        a.part_ml[row * 2 + 1] = ll;
      }
    }
  }
  // One split: the CTA has seen the whole head, so it knows the final LSE and adds the decode
  // scores itself. Its logits were written above by its own threads (visible to the CTA after
  // the barrier) and are still in L2. (CTA-uniform condition.)
  if (p.num_splits == 1 && p.accumulate_scores && n > 0) {
    __syncthreads();
    // Quads in flight per thread: as many as fit the register budget of 3 CTAs per SM at
    // head_dim 128 (<= 168; the kernel is at 163 — note: ptxas then also schedules the main loop
    // with more registers than the 139 it used without this pass, which measured 1.05-1.5x
    // faster with or without scores on an H100: keep an eye on the count when editing) and of
    // 6 CTAs per SM at 64 (<= 80: one quad, 76 registers).
    if constexpr (D >= 128) {
      AccumulateChunkScores<8, 4, 4, 2>(a, list, head_logits, 0, n, s_lse2);
    } else {
      ScoreQuads<kMaxGroup, 1>(a, list, head_logits, 0, n, s_lse2, G);
    }
  }
}

// Merges query head g of kv head sh over its splits and writes out/lse: warp w merges splits
// w, w+4, ... with an online rescale (lane holds D/32 consecutive elements), then the 4 warps
// merge through shared memory. The whole CTA calls it.
template <int D>
__device__ __forceinline__ void CombineRow(const DecodeArgs& a, int sh, int g, int used) {
  constexpr int kV = D / 32;
  const int G = a.group;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t row0 = static_cast<int64_t>(sh) * a.p.num_splits * G + g;
  float m = kNegInf;
  float l = 0.0f;
  float acc[kV];
#pragma unroll
  for (int i = 0; i < kV; ++i) acc[i] = 0.0f;
#pragma unroll 4
  for (int sp = warp; sp < used; sp += kWarps) {
    const int64_t row = row0 + static_cast<int64_t>(sp) * G;
    const float2 ml = *reinterpret_cast<const float2*>(a.part_ml + row * 2);
    const float* po = a.part_o + row * D + lane * kV;
    float v[kV];
#pragma unroll
    for (int i = 0; i < kV; i += 2) {
      const float2 x = *reinterpret_cast<const float2*>(po + i);
      v[i] = x.x;
      v[i + 1] = x.y;
    }
    if (ml.y == 0.0f) continue;  // empty split (warp-uniform)
    const float m_new = fmaxf(m, ml.x);
    const float fa = exp2f(m - m_new);
    const float fb = ml.y * exp2f(ml.x - m_new);
#pragma unroll
    for (int i = 0; i < kV; ++i) acc[i] = acc[i] * fa + fb * v[i];
    l = l * fa + fb;
    m = m_new;
  }
  __shared__ float s_acc[kWarps][D];
  __shared__ float s_m[kWarps];
  __shared__ float s_l[kWarps];
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kV; ++i) s_acc[warp][lane * kV + i] = acc[i];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float mm = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, s_m[w]);
    float ll = 0.0f;
    float oo = 0.0f;
    if (mm != kNegInf) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(s_m[w] - mm);
        ll += s_l[w] * f;
        oo += s_acc[w][d] * f;
      }
    }
    WriteFinal<D>(a, sh, g, d, oo, mm, ll);
  }
}

// One CTA per (head, query head g).
template <int D>
__global__ void __launch_bounds__(kThreads)
    DecodeCombineKernel(const __grid_constant__ DecodeArgs a) {
  const int sh = blockIdx.x;
  const int n = HeadLength(a.p, sh);
  CombineRow<D>(a, sh, blockIdx.y, max(1, CeilDiv(n, a.p.chunk_size)));
}

// CTA (head, y): query head y's combine (y < G), then the decode scores of chunk y (y < used
// splits). The final log2 LSE of every query head comes straight from the partials: warp w
// takes query heads w, w+4 (max over the used splits, then the rescaled sum; lanes stride
// the splits).
template <int D>
__global__ void __launch_bounds__(kThreads)
    DecodeCombineScoreKernel(const __grid_constant__ DecodeArgs a) {
  const DecodeAttentionParams& p = a.p;
  const int sh = blockIdx.x;
  const int y = blockIdx.y;
  const int G = a.group;
  const int n = HeadLength(p, sh);
  const int used = max(1, CeilDiv(n, p.chunk_size));
  if (y < G) CombineRow<D>(a, sh, y, used);
  const int c0 = y * p.chunk_size;
  if (c0 >= n) return;  // CTA-uniform
  __shared__ float s_lse2[kMaxGroup];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t row0 = static_cast<int64_t>(sh) * p.num_splits * G;
  for (int g = warp; g < G; g += kWarps) {
    float mm = kNegInf;
    for (int sp = lane; sp < used; sp += 32) mm = fmaxf(mm, a.part_ml[(row0 + sp * G + g) * 2]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mm = fmaxf(mm, __shfl_xor_sync(kFullMask, mm, off));
    float ll = 0.0f;
    if (mm != kNegInf) {
      for (int sp = lane; sp < used; sp += 32) {
        const float2 ml = *reinterpret_cast<const float2*>(a.part_ml + (row0 + sp * G + g) * 2);
        if (ml.y > 0.0f) ll += ml.y * exp2f(ml.x - mm);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ll += __shfl_xor_sync(kFullMask, ll, off);
    if (lane == 0) s_lse2[g] = Lse2(mm, ll);
  }
  __syncthreads();
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);
  AccumulateChunkScores<8, 4, 4, 2>(a, list,
                                    a.logits + (row0 + static_cast<int64_t>(y) * G) * p.chunk_size,
                                    c0, min(n, c0 + p.chunk_size), s_lse2);
}

}  // namespace

template <int kHeadDim>
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream) {
  const int heads = p.tables.num_seqs * p.tables.num_kv_heads;
  if (heads == 0) return cudaSuccess;
  DecodeArgs a;
  a.p = p;
  a.group = p.num_q_heads / p.tables.num_kv_heads;
  a.log2b = Log2Pow2(p.cache.block_size);
  a.scale_log2 = p.scale * kLog2e;
  a.q_stride = p.q_stride ? p.q_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  a.out_stride = p.out_stride ? p.out_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  const DecodeWorkspaceLayout w =
      DecodeWorkspace(p.tables.num_seqs, p.tables.num_kv_heads, a.group, kHeadDim, p.num_splits,
                      p.chunk_size, p.accumulate_scores);
  char* base = static_cast<char*>(p.workspace);
  a.part_o = reinterpret_cast<float*>(base + w.part_o);
  a.part_ml = reinterpret_cast<float*>(base + w.part_ml);
  a.logits = reinterpret_cast<float*>(base + w.logits);
  a.vec_scores = reinterpret_cast<uintptr_t>(p.cache.scores) % 16 == 0;

  DecodeSplitKernel<kHeadDim><<<dim3(heads, p.num_splits), kThreads, 0, stream>>>(a);
  if (p.num_splits > 1) {
    if (p.accumulate_scores) {
      DecodeCombineScoreKernel<kHeadDim>
          <<<dim3(heads, max(p.num_splits, a.group)), kThreads, 0, stream>>>(a);
    } else {
      DecodeCombineKernel<kHeadDim><<<dim3(heads, a.group), kThreads, 0, stream>>>(a);
    }
  }
  return cudaGetLastError();
}

template cudaError_t LaunchDecodeAttention<64>(const DecodeAttentionParams&, cudaStream_t);
template cudaError_t LaunchDecodeAttention<128>(const DecodeAttentionParams&, cudaStream_t);

}  // namespace kvc::kernels::internal
