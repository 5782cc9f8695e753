// Prefill attention (flash-style, causal by stored position, varlen, GQA) over per-head pages.
// See params.h for the contract and docs/design/kernels.md for the design.
//
// FlashAttention-2 structure. Grid (S*H, row tiles), 4 warps; a CTA owns kBM = 64 * kMT query
// rows of one (sequence, kv head) (128: kMT = 2 m16 tiles per warp). The rows are the head's
// tokens x the G query heads of the group, packed row = token * G + g, so the G heads share every
// K/V load. Each warp owns 16 * kMT rows. The CTA walks the head's KVs in tiles of kBN (32):
//   - K and V tiles are gathered from the pages (block table -> physical row, 16-byte cp.async
//     chunks) into XOR-swizzled shared memory ONCE per CTA, double-buffered: the copy of the
//     next tile is issued right after the one barrier per tile and lands while this tile is
//     computed (block ids are looked up a tile ahead).
//   - Q is staged in shared memory once; Q, K (ldmatrix) and V (ldmatrix.trans) fragments feed
//     mma.sync m16n8k16 (bf16 in, fp32 accumulate); P goes from the S accumulators straight to
//     the A operand. Online softmax in the log2 domain; O is rescaled only when a row max moved.
//   - Causality is by STORED position (slot order need not be position order). A prologue scan
//     of the head's positions marks the tiles that hold any KV visible to some query of the CTA
//     (a bitmap in shared memory); other tiles are never loaded. Per warp, a tile newer than all
//     the warp's queries is skipped, and only tiles that hold a KV newer than some query of the
//     warp (or past the end of the head) pay the per-element position mask.
// CTAs are scheduled heaviest first (the last row tiles of a sequence see the most KVs).
#include <climits>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Rows per warp (m16 tiles) and KVs per tile. Measured on the H100 (d 128, GQA 4, 32k tokens):
// 2 x 32 beats 2 x 64 (255 registers, spills or a slower split), 1 x 64 (K/V shared-memory
// traffic per FLOP doubles) by 10-40%.
constexpr int kMTiles = 2;
constexpr int kKvTile = 32;
constexpr int kMaxBitmapWords = 1024;  // tiles beyond 32 * this are never skipped by the CTA

struct PrefillArgs {
  PrefillAttentionParams p;
  int log2g;
  int log2b;
  int bitmap_words;
  bool pos_aligned;  // cache.positions is 16-byte aligned (int4 loads in the scan)
  float scale_log2;
  int64_t q_stride;
  int64_t out_stride;
};

// ---- PTX helpers (sm_80+) ---------------------------------------------------------------------
__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy global -> shared; src_bytes 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void CpAsync4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Shared-memory layout of one CTA. Rows of Q, K and V are D bf16 = D / 8 chunks of 16 bytes;
// chunk c of row r is stored at chunk (c ^ (r & 7)) of the row, so the 8 rows of an ldmatrix
// 8x8 matrix (and the rows written by one cp.async instruction) hit 8 different bank groups.
template <int D, int kMT, int kBN>
struct Cfg {
  static constexpr int kBM = kWarps * 16 * kMT;
  static constexpr int kRowBytes = D * 2;
  static constexpr int kQOff = 0;
  static constexpr int kKOff = kQOff + kBM * kRowBytes;        // 2 buffers
  static constexpr int kVOff = kKOff + 2 * kBN * kRowBytes;    // 2 buffers
  static constexpr int kPosOff = kVOff + 2 * kBN * kRowBytes;  // int32 [2][kBN]
  static constexpr int kRedOff = kPosOff + 2 * kBN * 4;        // int32 [kWarps]
  static constexpr int kBitmapOff = kRedOff + kWarps * 4;      // uint32 [bitmap_words]
  static constexpr int kThreadsPerRow = kThreads / kBN;        // K/V loader: threads per KV row
  static constexpr int kChunksPerThread = D / 8 / kThreadsPerRow;
  static_assert(kThreads % kBN == 0 && (D / 8) % kThreadsPerRow == 0, "loader mapping");
  static_assert(kBN % 16 == 0 && kBN <= 128, "kv tile");
};

__device__ __forceinline__ uint32_t Swz(int row, int chunk, int row_bytes) {
  return static_cast<uint32_t>(row * row_bytes + ((chunk ^ (row & 7)) << 4));
}

// First tile >= from marked in the bitmap (tiles past the bitmap's capacity count as marked);
// ntiles if none.
__device__ __forceinline__ int NextTile(const uint32_t* bitmap, int words, int from, int ntiles) {
  if (from >= ntiles) return ntiles;
  int w = from >> 5;
  if (w >= words) return from;
  uint32_t bits = bitmap[w] & (~0u << (from & 31));
  while (bits == 0) {
    if (++w >= words) return min(w << 5, ntiles);
    if ((w << 5) >= ntiles) return ntiles;
    bits = bitmap[w];
  }
  return min((w << 5) + __ffs(bits) - 1, ntiles);
}

template <int D, int kMT, int kBN>
__global__ void __launch_bounds__(kThreads, kMT == 1 ? 3 : 2)
    PrefillKernel(const __grid_constant__ PrefillArgs a) {
  using C = Cfg<D, kMT, kBN>;
  constexpr int kBM = C::kBM;
  constexpr int kRB = C::kRowBytes;
  constexpr int kNT = kBN / 8;  // n-tiles of S
  constexpr int kDT = D / 8;    // n-tiles of O
  extern __shared__ __align__(128) unsigned char smem[];
  int* pos_s = reinterpret_cast<int*>(smem + C::kPosOff);
  int* red_s = reinterpret_cast<int*>(smem + C::kRedOff);
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(smem + C::kBitmapOff);
  const uint32_t q_s = SmemAddr(smem + C::kQOff);
  const uint32_t k_s = SmemAddr(smem + C::kKOff);
  const uint32_t v_s = SmemAddr(smem + C::kVOff);
  const uint32_t pos_sa = SmemAddr(pos_s);

  const PrefillAttentionParams& p = a.p;
  const int sh = blockIdx.x;
  const int H = p.tables.num_kv_heads;
  const int G = 1 << a.log2g;
  const int s = sh / H;
  const int h = sh - s * H;
  const int q_begin = __ldg(p.cu_q + s);
  const int rows = (__ldg(p.cu_q + s + 1) - q_begin) << a.log2g;
  const int tile_row0 = (gridDim.y - 1 - blockIdx.y) * kBM;  // heaviest (last) row tiles first
  if (tile_row0 >= rows) return;                             // whole CTA
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int grp = lane >> 2;
  const int t4 = lane & 3;
  const int n = min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
  const int ntiles = (n + kBN - 1) / kBN;
  const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);
  const int log2b = a.log2b;
  const int bmask = (1 << log2b) - 1;

  // ---- Q rows -> shared memory (async), row positions, CTA / warp position bounds -------------
  {
    constexpr int kTpr = kThreads / 64;  // 2 threads per Q row, 64 rows per pass
    constexpr int kCpt = D / 8 / kTpr;
#pragma unroll
    for (int pass = 0; pass < kBM / 64; ++pass) {
      const int r = pass * 64 + tid / kTpr;
      const int row = tile_row0 + r;
      const bool ok = row < rows;
      const int tok = q_begin + (ok ? row >> a.log2g : 0);
      const int qh = h * G + (ok ? row & (G - 1) : 0);
      const Bf16* src = p.q + tok * a.q_stride + static_cast<int64_t>(qh) * D;
#pragma unroll
      for (int i = 0; i < kCpt; ++i) {
        const int c = (tid % kTpr) + i * kTpr;
        CpAsync16(q_s + Swz(r, c, kRB), src + c * 8, ok ? 16 : 0);
      }
    }
    CpAsyncCommit();
  }
  // This thread's MMA rows: m-tile mt, half r -> row warp * 16 kMT + mt * 16 + grp + 8 r.
  int qpos[kMT][2];
  int wmin = INT_MAX, wmax = INT_MIN;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = tile_row0 + warp * 16 * kMT + mt * 16 + grp + 8 * r;
      if (row < rows) {
        qpos[mt][r] = __ldg(p.q_positions + q_begin + (row >> a.log2g));
        wmin = min(wmin, qpos[mt][r]);
        wmax = max(wmax, qpos[mt][r]);
      } else {
        qpos[mt][r] = INT_MIN;  // sees nothing; never written
      }
    }
  wmin = __reduce_min_sync(kFullMask, wmin);
  wmax = __reduce_max_sync(kFullMask, wmax);
  if (lane == 0) red_s[warp] = wmax;
  const int words = min(a.bitmap_words, (ntiles + 31) >> 5);
  for (int w = tid; w < words; w += kThreads) bitmap[w] = 0u;
  __syncthreads();
  int cta_qmax = red_s[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) cta_qmax = max(cta_qmax, red_s[w]);

  // ---- K/V loader: thread -> KV row ld_row of the tile, chunks ld_part + kThreadsPerRow * i ---
  // Tile i of the walk lives in buffer i & 1; the copy of tile i + 1 is issued right after the
  // barrier that opens iteration i, so it has a whole iteration of compute to land.
  const int ld_row = tid / C::kThreadsPerRow;
  const int ld_part = tid % C::kThreadsPerRow;
  constexpr uint32_t kKvBufBytes = kBN * kRB;
  auto issue_tile = [&](int buf, int64_t slot) {
    const bool ok = slot >= 0;
    const int64_t off = ok ? slot * D : 0;
    const uint32_t kd = k_s + buf * kKvBufBytes;
    const uint32_t vd = v_s + buf * kKvBufBytes;
#pragma unroll
    for (int i = 0; i < C::kChunksPerThread; ++i) {
      const int c = ld_part + i * C::kThreadsPerRow;
      CpAsync16(kd + Swz(ld_row, c, kRB), p.cache.k + off + c * 8, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < C::kChunksPerThread; ++i) {
      const int c = ld_part + i * C::kThreadsPerRow;
      CpAsync16(vd + Swz(ld_row, c, kRB), p.cache.v + off + c * 8, ok ? 16 : 0);
    }
    if (ld_part == 0) {
      if (ok) {
        CpAsync4(pos_sa + (buf * kBN + ld_row) * 4, p.cache.positions + slot);
      } else {
        pos_s[buf * kBN + ld_row] = INT_MAX;
      }
    }
    CpAsyncCommit();
  };
  // Block id of this thread's KV row of tile t (prefetched one iteration ahead).
  auto block_of = [&](int t) -> int32_t {
    const int kv = t * kBN + ld_row;
    return t < ntiles && kv < n ? __ldg(list + (kv >> log2b)) : -1;
  };
  auto slot_from = [&](int t, int32_t block) -> int64_t {
    return block >= 0 ? (static_cast<int64_t>(block) << log2b) | ((t * kBN + ld_row) & bmask) : -1;
  };

  // The first tile is nearly always visible: start its copy before the scan (redone below if
  // the walk starts elsewhere).
  if (ntiles > 0) issue_tile(0, slot_from(0, block_of(0)));

  // ---- Scan: mark the tiles holding a KV that some query of the CTA sees --------------------
  // Lane l of warp w looks at 4 consecutive KVs (one block: b is a multiple of 4); a warp covers
  // 128 consecutive KVs per step, kBN / 4 lanes per tile.
  {
    const int scan_n = min(n, words * 32 * kBN);
    constexpr int kU = 4;
    constexpr int kStep = 128 * kWarps;
    constexpr int kLanesPerTile = kBN / 4;
    for (int wb = warp * 128; wb < scan_n; wb += kStep * kU) {  // warp-uniform
      int64_t first[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int i = wb + u * kStep + 4 * lane;
        first[u] = i < scan_n ? PhysSlot(list, i, log2b) : -1;
      }
      int4 pv[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int i = wb + u * kStep + 4 * lane;
        const int32_t* pp = p.cache.positions + first[u];
        if (i + 4 <= scan_n && a.pos_aligned) {
          pv[u] = __ldg(reinterpret_cast<const int4*>(pp));
        } else {
          pv[u] = make_int4(INT_MAX, INT_MAX, INT_MAX, INT_MAX);
          if (i < scan_n) pv[u].x = __ldg(pp);
          if (i + 1 < scan_n) pv[u].y = __ldg(pp + 1);
          if (i + 2 < scan_n) pv[u].z = __ldg(pp + 2);
          if (i + 3 < scan_n) pv[u].w = __ldg(pp + 3);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int i = wb + u * kStep + 4 * lane;
        const int mn = min(min(pv[u].x, pv[u].y), min(pv[u].z, pv[u].w));
        const uint32_t ballot = __ballot_sync(kFullMask, i < scan_n && mn <= cta_qmax);
        if (lane % kLanesPerTile == 0 && i < scan_n) {
          const uint32_t m =
              kLanesPerTile == 32 ? ballot : (ballot >> lane) & ((1u << kLanesPerTile) - 1);
          if (m != 0) {
            const int t = i / kBN;
            atomicOr(bitmap + (t >> 5), 1u << (t & 31));
          }
        }
      }
    }
  }
  __syncthreads();

  int tile = NextTile(bitmap, words, 0, ntiles);
  int next = ntiles;
  int32_t next_block = -1;
  if (tile < ntiles) {
    if (tile != 0) {
      CpAsyncWaitAll();  // this thread's copy of tile 0 into the same rows
      issue_tile(0, slot_from(tile, block_of(tile)));
    }
    next = NextTile(bitmap, words, tile + 1, ntiles);
    next_block = block_of(next);
  }

  // Per-lane ldmatrix offsets (bytes, before the chunk swizzle).
  const int x7 = lane & 7;
  const uint32_t q_row_off = (warp * 16 * kMT + (lane & 15)) * kRB;  // + mt * 16 rows
  const int q_chunk_hi = lane >> 4;
  const uint32_t k_row_off = ((lane & 7) + ((lane >> 4) << 3)) * kRB;  // + np * 16 rows
  const int k_chunk_hi = (lane >> 3) & 1;
  const uint32_t v_row_off = ((lane & 7) + (((lane >> 3) & 1) << 3)) * kRB;  // + kk * 16 rows
  const int v_chunk_hi = lane >> 4;

  float m_run[kMT][2];
  float l_run[kMT][2];
  float o[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_run[mt][r] = kNegInf;
      l_run[mt][r] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kDT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
  }
  const float sl2 = a.scale_log2;

  int buf = 0;
  while (tile < ntiles) {
    CpAsyncWaitAll();
    __syncthreads();  // tile's K, V, positions (and Q) landed; every warp is done with buf ^ 1
    int after = ntiles;
    if (next < ntiles) {
      issue_tile(buf ^ 1, slot_from(next, next_block));
      after = NextTile(bitmap, words, next + 1, ntiles);
      next_block = block_of(after);
    }
    const int* pos_b = pos_s + buf * kBN;
    const uint32_t kb_s = k_s + buf * kKvBufBytes;
    const uint32_t vb_s = v_s + buf * kKvBufBytes;

    // Warp-level visibility of this tile.
    int pmin = INT_MAX, pmax = INT_MIN;
#pragma unroll
    for (int i = lane; i < kBN; i += 32) {
      pmin = min(pmin, pos_b[i]);
      pmax = max(pmax, pos_b[i]);
    }
    pmin = __reduce_min_sync(kFullMask, pmin);
    pmax = __reduce_max_sync(kFullMask, pmax);
    if (pmin <= wmax) {  // warp-uniform: some query of the warp sees some KV of the tile
      float sacc[kMT][kNT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
          sacc[mt][j][0] = sacc[mt][j][1] = sacc[mt][j][2] = sacc[mt][j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          LdMatrixX4(qa[mt], q_s + q_row_off + mt * 16 * kRB + (((2 * kk + q_chunk_hi) ^ x7) << 4));
        }
#pragma unroll
        for (int np = 0; np < kBN / 16; ++np) {
          uint32_t kb[4];
          LdMatrixX4(kb, kb_s + k_row_off + np * 16 * kRB + (((2 * kk + k_chunk_hi) ^ x7) << 4));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            Mma(sacc[mt][2 * np], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], kb[0], kb[1]);
            Mma(sacc[mt][2 * np + 1], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], kb[2], kb[3]);
          }
        }
      }
      if (pmax > wmin) {  // some KV is newer than some query of the warp (or past the end)
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          const int2 pp = *reinterpret_cast<const int2*>(pos_b + j * 8 + 2 * t4);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            if (pp.x > qpos[mt][0]) sacc[mt][j][0] = kNegInf;
            if (pp.y > qpos[mt][0]) sacc[mt][j][1] = kNegInf;
            if (pp.x > qpos[mt][1]) sacc[mt][j][2] = kNegInf;
            if (pp.y > qpos[mt][1]) sacc[mt][j][3] = kNegInf;
          }
        }
      }
      // Online softmax (raw-logit running max; p = 2^(s * scale_log2 - m * scale_log2)).
      float alpha[kMT][2];
      bool rescale = false;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = kNegInf;
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            mx = fmaxf(mx, fmaxf(sacc[mt][j][2 * r], sacc[mt][j][2 * r + 1]));
          }
          mx = QuadMax(mx);
          const float m_new = fmaxf(m_run[mt][r], mx);
          const float neg = m_new == kNegInf ? 0.0f : -m_new * sl2;
          alpha[mt][r] = FastExp2(fmaf(m_run[mt][r], sl2, neg));
          rescale |= m_new != m_run[mt][r];
          m_run[mt][r] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            sacc[mt][j][2 * r] = FastExp2(fmaf(sacc[mt][j][2 * r], sl2, neg));
            sacc[mt][j][2 * r + 1] = FastExp2(fmaf(sacc[mt][j][2 * r + 1], sl2, neg));
            sum += sacc[mt][j][2 * r] + sacc[mt][j][2 * r + 1];
          }
          l_run[mt][r] = l_run[mt][r] * alpha[mt][r] + sum;
        }
      if (__any_sync(kFullMask, rescale)) {  // the running max moved for some row of the warp
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kDT; ++j) {
            o[mt][j][0] *= alpha[mt][0];
            o[mt][j][1] *= alpha[mt][0];
            o[mt][j][2] *= alpha[mt][1];
            o[mt][j][3] *= alpha[mt][1];
          }
      }
      // O += P V: P from the S accumulators (A operand), V via ldmatrix.trans.
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        uint32_t pa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          pa[mt][0] = PackBf16x2(sacc[mt][2 * kk][0], sacc[mt][2 * kk][1]);
          pa[mt][1] = PackBf16x2(sacc[mt][2 * kk][2], sacc[mt][2 * kk][3]);
          pa[mt][2] = PackBf16x2(sacc[mt][2 * kk + 1][0], sacc[mt][2 * kk + 1][1]);
          pa[mt][3] = PackBf16x2(sacc[mt][2 * kk + 1][2], sacc[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t vb[4];
          LdMatrixX4Trans(vb,
                          vb_s + v_row_off + kk * 16 * kRB + (((2 * dp + v_chunk_hi) ^ x7) << 4));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            Mma(o[mt][2 * dp], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], vb[0], vb[1]);
            Mma(o[mt][2 * dp + 1], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], vb[2], vb[3]);
          }
        }
      }
    }
    tile = next;
    next = after;
    buf ^= 1;
  }

  // ---- Epilogue: O / l -> this warp's own Q rows in shared memory -> 16-byte global stores -----
  CpAsyncWaitAll();
  __syncthreads();  // no copy still in flight into Q (a head without visible tiles)
  unsigned char* q_sp = smem + C::kQOff;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float lr = QuadSum(l_run[mt][r]);
      const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
      const int r_local = warp * 16 * kMT + mt * 16 + grp + 8 * r;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        *reinterpret_cast<uint32_t*>(q_sp + Swz(r_local, j, kRB) + t4 * 4) =
            PackBf16x2(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      }
      const int row = tile_row0 + r_local;
      if (p.lse != nullptr && t4 == 0 && row < rows) {
        const int tok = q_begin + (row >> a.log2g);
        const int qh = h * G + (row & (G - 1));
        p.lse[static_cast<int64_t>(tok) * p.num_q_heads + qh] =
            lr > 0.0f ? (m_run[mt][r] * sl2 + log2f(lr)) * kLn2 : kNegInf;
      }
    }
  __syncwarp();
  {
    constexpr int kCpr = D / 8;  // chunks per row
    constexpr int kRowsPerPass = 32 / kCpr;
#pragma unroll
    for (int i = 0; i < 16 * kMT / kRowsPerPass; ++i) {
      const int r_local = warp * 16 * kMT + i * kRowsPerPass + lane / kCpr;
      const int c = lane % kCpr;
      const int row = tile_row0 + r_local;
      if (row < rows) {
        const uint4 v = *reinterpret_cast<const uint4*>(q_sp + Swz(r_local, c, kRB));
        const int tok = q_begin + (row >> a.log2g);
        const int qh = h * G + (row & (G - 1));
        Store16(p.out + tok * a.out_stride + static_cast<int64_t>(qh) * D + c * 8, v);
      }
    }
  }
}

template <int D, int kMT, int kBN>
cudaError_t Launch(const PrefillArgs& a, int heads, cudaStream_t stream) {
  using C = Cfg<D, kMT, kBN>;
  const int tiles = CeilDiv(a.p.max_q_len << a.log2g, C::kBM);
  const int ntiles_max = CeilDiv(a.p.tables.max_num_kvs, kBN);
  PrefillArgs args = a;
  args.bitmap_words = min(CeilDiv(ntiles_max, 32), kMaxBitmapWords);
  const int smem = C::kBitmapOff + 4 * max(args.bitmap_words, 1);
  auto kernel = PrefillKernel<D, kMT, kBN>;
  // Raise the dynamic shared-memory limit once, to the largest size this instance can ask for.
  static const cudaError_t attr = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kBitmapOff + 4 * kMaxBitmapWords);
  if (attr != cudaSuccess) return attr;
  kernel<<<dim3(heads, tiles), kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

template <int kHeadDim>
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream) {
  const int heads = p.tables.num_seqs * p.tables.num_kv_heads;
  const int group = p.num_q_heads / p.tables.num_kv_heads;
  if (heads == 0 || p.max_q_len <= 0) return cudaSuccess;
  PrefillArgs a;
  a.p = p;
  a.log2g = Log2Pow2(group);
  a.log2b = Log2Pow2(p.cache.block_size);
  a.bitmap_words = 0;
  a.pos_aligned = (reinterpret_cast<uintptr_t>(p.cache.positions) & 15) == 0;
  a.scale_log2 = p.scale * kLog2e;
  a.q_stride = p.q_stride ? p.q_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  a.out_stride = p.out_stride ? p.out_stride : static_cast<int64_t>(p.num_q_heads) * kHeadDim;
  return Launch<kHeadDim, kMTiles, kKvTile>(a, heads, stream);
}

template cudaError_t LaunchPrefillAttention<64>(const PrefillAttentionParams&, cudaStream_t);
template cudaError_t LaunchPrefillAttention<128>(const PrefillAttentionParams&, cudaStream_t);

}  // namespace kvc::kernels::internal
