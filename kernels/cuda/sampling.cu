// Token sampling on the device (contract: kernels/include/kvc/kernels/sampling.h).
//
// SampleTokensKernel: grid (rows), 512 threads, one row per block, nothing outside the block.
//   1. One pass over the row: argmax (largest logit, lowest index), max, finite min/max and the
//      number of candidates (logit > -inf). Greedy rows stop here.
//   2. Neither top-k nor top-p: the CPU draws along the INDEX order. One pass stores the fp64
//      mass of each 512-token tile in shared memory; warp 0 scans the tile masses, finds the tile
//      where the cumulative mass passes u * total and scans inside it.
//   3. Otherwise the CPU's order S is (logit descending, index ascending) over the candidates,
//      and top-k, top-p and the draw each ask for "the first element of S where a cumulative
//      count or mass crosses T". That is a radix-style SELECT, never a sort:
//        level 0   256 bins linear in the logit value over [finite min, max] (+inf: bin 0);
//        level L   256 bins linear in the order-preserving uint32 key inside the chosen bin's
//                  [min key, max key] until one key is left (a tie group);
//        ties      the crossing position inside a group of equal logits (equal weights) is
//                  computed, then found by bins linear in the token index.
//      Each level is one pass over the row (or over a shared-memory list once the chosen bin
//      holds <= 4096 tokens; the kept set of top-k <= 4096 / a small top-p set is gathered into
//      that list so later steps never touch global memory), with shared-memory atomics for
//      counts, fp64 masses and key / index min-max per bin, and a one-warp scan over the bins.
//      Typical cost: 2-3 global passes per select.
// Weights are exp((x - max) / t) in fp64 exactly as the CPU computes them (logits stay fp32), so
// GPU and CPU pick different tokens only when u * total lies within ~1e-15 relative of a CDF
// boundary (fp64 summation order).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/sampling_launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr int kListCap = 4096;
constexpr int kTile = 512;  // tokens per warp tile of the index-order path
constexpr int kUnroll = 8;  // loads in flight per thread in row passes
constexpr unsigned kFull = 0xffffffffu;
static_assert(static_cast<int64_t>(kListCap) * kTile >= kSampleTokensMaxVocab,
              "tile masses of the index-order path must fit the list storage");
static_assert(kBins == 32 * 8, "the bin walk gives each lane 8 bins");

enum Phase : int { kLevel0 = 0, kOrdLevel = 1, kIdxLevel = 2, kDone = 3, kNotFound = 4 };

// NaN -> -inf (never sampled); -0 -> +0 (equal logits tie by index, as on the CPU).
__device__ __forceinline__ float Clean(float x) {
  if (isnan(x)) return -INFINITY;
  return x == 0.0f ? 0.0f : x;
}
// Order-preserving map of non-NaN floats to uint32 and back.
__device__ __forceinline__ uint32_t Ord(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float FromOrd(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// A position in S given by its element: "in range" = at or before it in S.
struct Boundary {
  uint32_t ord;
  int32_t idx;
};
__device__ __forceinline__ bool InRange(uint32_t o, int32_t i, const Boundary& b) {
  return o > b.ord || (o == b.ord && i <= b.idx);
}

// The CPU reference's weight of a candidate.
struct Weigher {
  bool inf_mode;  // some logit is +inf: exactly those share the mass
  float maxv;
  double inv_t;
  __device__ double operator()(float x) const {
    if (inf_mode) return x == INFINITY ? 1.0 : 0.0;
    return exp((static_cast<double>(x) - static_cast<double>(maxv)) * inv_t);
  }
};

// Level-0 bin: monotone non-increasing in x (bin 0 = +inf, then 255 equal-width value bins).
struct Bin0 {
  double fmax;
  double inv_w;
  __device__ int operator()(float x) const {
    if (x == INFINITY) return 0;
    const double d = (fmax - static_cast<double>(x)) * inv_w;
    return 1 + static_cast<int>(fmin(d, 254.0));
  }
};

struct Row {
  const float* x;
  int32_t n;
  bool use_list;  // the current range is gathered in Shared::u.list
  Weigher w;
  Bin0 bin0;
};

// State of one select, written by lane 0 of warp 0 between passes.
struct SelState {
  int phase;
  int mass_mode;  // 0: every candidate weighs 1 (rank select)
  int strict;     // crossing is cum > T (else cum >= T)
  int frac_mode;  // T = frac * (mass of the range), known after the first level
  int gather_next;
  int local_list;
  uint32_t klo, khi, tau;
  int32_t ilo, ihi;
  double frac, T, cum, cntb;
  // tie group being resolved by index
  double w_tau, cum_group, cntb_group;
  int j;
  // result
  uint32_t r_ord;
  int32_t r_idx;
  double r_cum, r_count;
};

struct Shared {
  int cnt[kBins];
  double mass[kBins];
  uint32_t kmin[kBins], kmax[kBins];
  int32_t imin[kBins], imax[kBins];
  float red_f[kWarps], red_f2[kWarps], red_f3[kWarps];
  int32_t red_i[kWarps], red_n[kWarps];
  double red_d[kWarps];
  SelState st;
  int list_n;
  int sel_tile, sel_fallback, token;
  double sel_cum, sel_target;
  union {
    struct {
      uint32_t ord[kListCap];
      int32_t idx[kListCap];
    } list;
    double tile_mass[kListCap];
  } u;
};

__device__ __forceinline__ int Lane() { return threadIdx.x & 31; }
__device__ __forceinline__ int Warp() { return threadIdx.x >> 5; }

__device__ int BlockSum(int v, Shared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  if (Lane() == 0) sh.red_n[Warp()] = v;
  __syncthreads();
  int t = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) t += sh.red_n[w];
  __syncthreads();
  return t;
}

// Calls f(valid, x, ord, idx) for every token of the row (valid = candidate); every thread makes
// the same number of calls, so f may use warp collectives.
template <typename F>
__device__ __forceinline__ void ForEachGlobal(const float* __restrict__ row, int32_t n, F&& f) {
  for (int32_t base = 0; base < n; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int32_t i = base + k * kThreads + static_cast<int32_t>(threadIdx.x);
      v[k] = i < n ? __ldg(row + i) : -INFINITY;
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int32_t i = base + k * kThreads + static_cast<int32_t>(threadIdx.x);
      const float x = Clean(v[k]);
      f(x > -INFINITY, x, Ord(x), i);
    }
  }
}

// The same over the gathered list.
template <typename F>
__device__ __forceinline__ void ForEachList(const Shared& sh, F&& f) {
  const int n = sh.list_n;
  for (int base = 0; base < n; base += kThreads) {
    const int p = base + static_cast<int>(threadIdx.x);
    const bool valid = p < n;
    const uint32_t o = valid ? sh.u.list.ord[p] : 0u;
    const int32_t i = valid ? sh.u.list.idx[p] : 0;
    f(valid, FromOrd(o), o, i);
  }
}

template <typename F>
__device__ __forceinline__ void ForEach(const Row& row, const Shared& sh, bool list, F&& f) {
  if (list) {
    ForEachList(sh, f);
  } else {
    ForEachGlobal(row.x, row.n, f);
  }
}

// Warp-aggregated append to the list; called by all 32 lanes.
__device__ __forceinline__ void Append(Shared& sh, bool take, uint32_t o, int32_t i) {
  const unsigned m = __ballot_sync(kFull, take);
  if (m == 0) return;
  const int leader = __ffs(m) - 1;
  int base = 0;
  if (Lane() == leader) base = atomicAdd(&sh.list_n, __popc(m));
  base = __shfl_sync(kFull, base, leader);
  if (take) {
    const int pos = base + __popc(m & ((1u << Lane()) - 1u));
    if (pos < kListCap) {
      sh.u.list.ord[pos] = o;
      sh.u.list.idx[pos] = i;
    }
  }
}

// Gathers the range into the list (the caller knows it holds <= kListCap tokens).
__device__ void Gather(Row& row, Shared& sh, const Boundary& range) {
  if (threadIdx.x == 0) sh.list_n = 0;
  __syncthreads();
  ForEachGlobal(row.x, row.n, [&](bool valid, float, uint32_t o, int32_t i) {
    Append(sh, valid && InRange(o, i, range), o, i);
  });
  __syncthreads();
  row.use_list = true;
}

struct SelectResult {
  bool found;
  uint32_t ord;
  int32_t idx;
  double cum;    // count or mass of the range up to and including the element
  double count;  // number of range elements up to and including it
};

// One warp: finds the bin where the cumulative value crosses T and moves the select's state on.
__device__ __noinline__ void WalkBins(const Row& row, Shared& sh) {
  SelState& st = sh.st;
  const int lane = Lane();
  const bool idx_phase = st.phase == kIdxLevel;
  const bool use_mass = st.mass_mode && !idx_phase;
  const bool strict = idx_phase ? true : st.strict != 0;
  double v[8];
  int c[8];
  double lsum = 0;
  int lcnt = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int b = lane * 8 + j;
    c[j] = sh.cnt[b];
    v[j] = use_mass ? sh.mass[b] : static_cast<double>(c[j]);
    lsum += v[j];
    lcnt += c[j];
  }
  double incl = lsum;
  int icnt = lcnt;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double t = __shfl_up_sync(kFull, incl, o);
    const int tc = __shfl_up_sync(kFull, icnt, o);
    if (lane >= o) {
      incl += t;
      icnt += tc;
    }
  }
  double excl = __shfl_up_sync(kFull, incl, 1);
  int ecnt = __shfl_up_sync(kFull, icnt, 1);
  if (lane == 0) {
    excl = 0;
    ecnt = 0;
  }
  const double total = __shfl_sync(kFull, incl, 31);
  double T = st.T;
  if (st.phase == kLevel0 && st.frac_mode) T = st.frac * total;
  const double cum0 = st.cum;
  const double cntb0 = st.cntb;
  auto crosses = [&](double s) { return strict ? s > T : s >= T; };

  int pick_bin = -1;
  double pick_cum = 0, pick_cnt = 0;
  const unsigned m = __ballot_sync(kFull, lcnt > 0 && crosses(cum0 + incl));
  const bool found = m != 0;
  int owner;
  if (found) {
    owner = __ffs(m) - 1;
    if (lane == owner) {
      double s = cum0 + excl;
      double sc = cntb0 + ecnt;
      for (int j = 0; j < 8; ++j) {
        if (c[j] > 0 && crosses(s + v[j])) {
          pick_bin = lane * 8 + j;
          pick_cum = s;
          pick_cnt = sc;
          break;
        }
        s += v[j];
        sc += c[j];
      }
    }
  } else {
    // Rounding put T at the very end of the parent bin: its last element of positive weight.
    const unsigned has = __ballot_sync(kFull, lcnt > 0 && (lsum > 0 || !use_mass));
    const unsigned any = __ballot_sync(kFull, lcnt > 0);
    owner = has != 0 ? 31 - __clz(has) : (any != 0 ? 31 - __clz(any) : 0);
  }
  if (lane == owner && pick_bin < 0) {
    double s = cum0 + excl;
    double sc = cntb0 + ecnt;
    for (int j = 0; j < 8; ++j) {
      if (c[j] > 0 && (v[j] > 0 || !use_mass || lsum <= 0)) {
        pick_bin = lane * 8 + j;
        pick_cum = s;
        pick_cnt = sc;
      }
      s += v[j];
      sc += c[j];
    }
  }
  pick_bin = __shfl_sync(kFull, pick_bin, owner);
  pick_cum = __shfl_sync(kFull, pick_cum, owner);
  pick_cnt = __shfl_sync(kFull, pick_cnt, owner);
  __syncwarp();  // every lane has read the state before lane 0 rewrites it
  if (lane != 0) return;

  st.gather_next = 0;
  if (st.phase == kLevel0) {
    st.T = T;
    if (!found || pick_bin < 0) {
      st.phase = kNotFound;
      return;
    }
  }
  if (pick_bin < 0) {  // nothing in the parent bin: cannot happen; end without a result
    st.phase = kNotFound;
    return;
  }
  const int b = pick_bin;
  const int cb = sh.cnt[b];
  bool may_gather = false;
  if (!idx_phase) {
    st.cum = pick_cum;
    st.cntb = pick_cnt;
    const double w = st.mass_mode ? row.w(FromOrd(sh.kmin[b])) : 1.0;
    if (cb == 1 || sh.kmin[b] == sh.kmax[b]) {
      int j = 0;
      if (cb > 1) {
        double jd;
        if (!st.mass_mode) {
          jd = T - pick_cnt;  // rank select is always strict
        } else if (!(w > 0)) {
          jd = 0;
        } else {
          const double rem = T - pick_cum;
          jd = st.strict ? floor(rem / w) : ceil(rem / w) - 1.0;
        }
        j = !(jd >= 0) ? 0 : (jd >= cb - 1 ? cb - 1 : static_cast<int>(jd));
      }
      if (j == 0) {
        st.phase = kDone;
        st.r_ord = sh.kmin[b];
        st.r_idx = sh.imin[b];
        st.r_cum = st.mass_mode ? pick_cum + w : pick_cnt + 1;
        st.r_count = pick_cnt + 1;
        return;
      }
      st.phase = kIdxLevel;
      st.tau = sh.kmin[b];
      st.ilo = sh.imin[b];
      st.ihi = row.n - 1;
      st.w_tau = w;
      st.cum_group = pick_cum;
      st.cntb_group = pick_cnt;
      st.j = j;
      st.T = j;
      st.cum = 0;
      st.cntb = 0;
    } else {
      st.phase = kOrdLevel;
      st.klo = sh.kmin[b];
      st.khi = sh.kmax[b];
    }
    may_gather = true;
  } else {
    if (cb == 1) {
      st.phase = kDone;
      st.r_ord = st.tau;
      st.r_idx = sh.imin[b];
      st.r_cum = st.mass_mode ? st.cum_group + (st.j + 1) * st.w_tau : st.cntb_group + st.j + 1;
      st.r_count = st.cntb_group + st.j + 1;
      return;
    }
    st.ilo = sh.imin[b];
    st.ihi = sh.imax[b];
    st.cum = pick_cum;
    st.cntb = pick_cnt;
    may_gather = true;
  }
  if (may_gather && !row.use_list && !st.local_list && cb <= kListCap) {
    st.gather_next = 1;
    st.local_list = 1;
  }
}

// First element of S inside `range` where the cumulative count (mass_mode false) or mass
// crosses T (strict: > T, else >= T); frac_mode: T = value * (mass of the range), else value.
// found = false when even the whole range does not cross (rounding at the top end).
__device__ __noinline__ SelectResult Select(const Row& row, Shared& sh, const Boundary& range,
                                            bool mass_mode, bool strict, bool frac_mode,
                                            double value) {
  if (threadIdx.x == 0) {
    SelState& st = sh.st;
    st.phase = kLevel0;
    st.mass_mode = mass_mode;
    st.strict = strict;
    st.frac_mode = frac_mode;
    st.frac = value;
    st.T = value;
    st.cum = 0;
    st.cntb = 0;
    st.gather_next = 0;
    st.local_list = 0;
  }
  __syncthreads();
  while (true) {
    const int phase = sh.st.phase;
    const bool gather = sh.st.gather_next != 0;
    const bool from_list = row.use_list || (sh.st.local_list && !gather);
    const uint32_t klo = sh.st.klo, khi = sh.st.khi, tau = sh.st.tau;
    const int32_t ilo = sh.st.ilo, ihi = sh.st.ihi;
    const bool use_mass = sh.st.mass_mode && phase != kIdxLevel;
    const uint64_t ord_span = static_cast<uint64_t>(khi - klo) + 1;
    const uint64_t idx_span =
        static_cast<uint64_t>(static_cast<uint32_t>(ihi) - static_cast<uint32_t>(ilo)) + 1;
    if (threadIdx.x < kBins) {
      sh.cnt[threadIdx.x] = 0;
      sh.mass[threadIdx.x] = 0.0;
      sh.kmin[threadIdx.x] = 0xffffffffu;
      sh.kmax[threadIdx.x] = 0u;
      sh.imin[threadIdx.x] = INT32_MAX;
      sh.imax[threadIdx.x] = -1;
    }
    __syncthreads();  // everyone read the state, bins are clear
    if (threadIdx.x == 0 && gather) sh.list_n = 0;
    __syncthreads();
    ForEach(row, sh, from_list, [&](bool valid, float x, uint32_t o, int32_t i) {
      bool take = valid && InRange(o, i, range);
      if (phase == kOrdLevel) {
        take = take && o >= klo && o <= khi;
      } else if (phase == kIdxLevel) {
        take = take && o == tau && i >= ilo && i <= ihi;
      }
      if (gather) Append(sh, take, o, i);
      if (!take) return;
      int b;
      if (phase == kLevel0) {
        b = row.bin0(x);
      } else if (phase == kOrdLevel) {
        b = static_cast<int>((static_cast<uint64_t>(khi - o) * kBins) / ord_span);
      } else {
        b = static_cast<int>((static_cast<uint64_t>(static_cast<uint32_t>(i - ilo)) * kBins) /
                             idx_span);
      }
      atomicAdd(&sh.cnt[b], 1);
      if (use_mass) atomicAdd(&sh.mass[b], row.w(x));
      if (phase != kIdxLevel) {
        atomicMin(&sh.kmin[b], o);
        atomicMax(&sh.kmax[b], o);
      } else {
        atomicMax(&sh.imax[b], i);
      }
      atomicMin(&sh.imin[b], i);
    });
    __syncthreads();
    if (threadIdx.x < 32) WalkBins(row, sh);
    __syncthreads();
    if (sh.st.phase >= kDone) break;
  }
  SelectResult r;
  r.found = sh.st.phase == kDone;
  r.ord = sh.st.r_ord;
  r.idx = sh.st.r_idx;
  r.cum = sh.st.r_cum;
  r.count = sh.st.r_count;
  __syncthreads();
  return r;
}

// Sorted-order path (top-k and / or top-p).
__device__ int32_t SampleSorted(Row& row, Shared& sh, int32_t ncand, bool use_k, int32_t top_k,
                                bool use_p, float top_p, double u) {
  Boundary range{0u, INT32_MAX};  // every candidate (their keys are > Ord(-inf) > 0)
  int64_t n = ncand;
  if (use_k && top_k < ncand) {
    const SelectResult k = Select(row, sh, range, false, true, false, top_k - 1.0);
    range = Boundary{k.ord, k.idx};
    n = top_k;
  }
  if (n <= kListCap) Gather(row, sh, range);
  double total = -1;  // mass of the range when known from the top-p select
  if (use_p) {
    const SelectResult p = Select(row, sh, range, true, false, true, static_cast<double>(top_p));
    if (p.found) {
      range = Boundary{p.ord, p.idx};
      total = p.cum;
      n = static_cast<int64_t>(p.count);
      if (!row.use_list && n <= kListCap) Gather(row, sh, range);
    }
  }
  SelectResult d = total >= 0 ? Select(row, sh, range, true, true, false, u * total)
                              : Select(row, sh, range, true, true, true, u);
  if (!d.found) {
    // u * total at the very top (rounding): the last token of positive weight, as on the CPU.
    int npos = 0;
    ForEach(row, sh, row.use_list, [&](bool valid, float x, uint32_t o, int32_t i) {
      if (valid && InRange(o, i, range) && row.w(x) > 0) ++npos;
    });
    npos = BlockSum(npos, sh);
    d = Select(row, sh, range, false, true, false, npos - 1.0);
  }
  return d.idx;
}

// Index-order path (temperature only).
__device__ __noinline__ int32_t SamplePlain(const Row& row, Shared& sh, double u) {
  const int n = row.n;
  const int ntiles = (n + kTile - 1) / kTile;
  const int lane = Lane();
  for (int t = Warp(); t < ntiles; t += kWarps) {
    double s = 0;
#pragma unroll
    for (int j = 0; j < kTile / 32; ++j) {
      const int i = t * kTile + j * 32 + lane;
      const float x = i < n ? Clean(__ldg(row.x + i)) : -INFINITY;
      if (x > -INFINITY) s += row.w(x);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
    if (lane == 0) sh.u.tile_mass[t] = s;
  }
  __syncthreads();
  if (Warp() == 0) {
    const int per = (ntiles + 31) / 32;
    const int t0 = min(lane * per, ntiles), t1 = min(t0 + per, ntiles);
    double ls = 0;
    for (int t = t0; t < t1; ++t) ls += sh.u.tile_mass[t];
    double incl = ls;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double v = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += v;
    }
    double excl = __shfl_up_sync(kFull, incl, 1);
    if (lane == 0) excl = 0;
    const double total = __shfl_sync(kFull, incl, 31);
    const double target = u * total;
    const unsigned m = __ballot_sync(kFull, ls > 0 && excl + ls > target);
    int tile = -1;
    double before = 0;
    if (m != 0) {
      if (lane == __ffs(m) - 1) {
        double s = excl;
        for (int t = t0; t < t1; ++t) {
          const double tm = sh.u.tile_mass[t];
          if (tm > 0 && s + tm > target) {
            tile = t;
            before = s;
            break;
          }
          s += tm;
        }
      }
    }
    const unsigned has = __ballot_sync(kFull, ls > 0);
    const int owner = m != 0 ? __ffs(m) - 1 : (has != 0 ? 31 - __clz(has) : 0);
    if (lane == owner && tile < 0) {  // rounding at the top end: last tile of positive mass
      double s = excl;
      for (int t = t0; t < t1; ++t) {
        const double tm = sh.u.tile_mass[t];
        if (tm > 0) {
          tile = t;
          before = s;
        }
        s += tm;
      }
      sh.sel_fallback = m == 0;
    } else if (lane == owner) {
      sh.sel_fallback = 0;
    }
    if (lane == owner) {
      sh.sel_tile = tile;
      sh.sel_cum = before;
      sh.sel_target = target;
    }
  }
  __syncthreads();
  if (sh.sel_tile < 0) return -1;  // no positive mass at all: cannot happen (max weighs 1)
  if (Warp() == 0) {
    const int tile = sh.sel_tile;
    const double target = sh.sel_target;
    const double before = sh.sel_cum;
    const bool fallback = sh.sel_fallback != 0;
    const int base = tile * kTile + lane * (kTile / 32);
    auto weight_at = [&](int i) -> double {
      const float x = i < n ? Clean(__ldg(row.x + i)) : -INFINITY;
      return x > -INFINITY ? row.w(x) : 0.0;
    };
    double ls = 0;
    for (int j = 0; j < kTile / 32; ++j) ls += weight_at(base + j);
    double incl = ls;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double v = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += v;
    }
    double excl = __shfl_up_sync(kFull, incl, 1);
    if (lane == 0) excl = 0;
    const unsigned m = fallback ? 0u : __ballot_sync(kFull, ls > 0 && before + excl + ls > target);
    int token = -1;
    if (m != 0 && lane == __ffs(m) - 1) {
      double s = before + excl;
      for (int j = 0; j < kTile / 32; ++j) {
        const double w = weight_at(base + j);
        if (w > 0 && s + w > target) {
          token = base + j;
          break;
        }
        s += w;
      }
    }
    const unsigned has = __ballot_sync(kFull, ls > 0);
    const int owner = m != 0 ? __ffs(m) - 1 : (has != 0 ? 31 - __clz(has) : 0);
    if (lane == owner && token < 0) {  // last token of positive weight in the tile
      for (int j = 0; j < kTile / 32; ++j) {
        if (weight_at(base + j) > 0) token = base + j;
      }
    }
    if (lane == owner) sh.token = token;
  }
  __syncthreads();
  return sh.token;
}

__global__ void __launch_bounds__(kThreads, 2)
    SampleTokensKernel(const __grid_constant__ SampleTokensParams p, int64_t stride) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float* __restrict__ x = p.logits + static_cast<int64_t>(r) * stride;
  const int32_t n = p.vocab;
  const float t = p.temperature != nullptr ? p.temperature[r] : 0.0f;
  const float top_p = p.top_p != nullptr ? p.top_p[r] : 1.0f;
  const int32_t top_k = p.top_k != nullptr ? p.top_k[r] : 0;
  const bool greedy = !(t > 0.0f) || top_k == 1;

  // Pass 1: argmax, max, finite min / max, candidate count.
  float best = -INFINITY;
  int32_t best_i = INT32_MAX;
  float fmx = -INFINITY, fmn = INFINITY;
  int ncand = 0;
  ForEachGlobal(x, n, [&](bool valid, float v, uint32_t, int32_t i) {
    if (!valid) return;
    if (v > best || (v == best && i < best_i)) {
      best = v;
      best_i = i;
    }
    ++ncand;
    if (v != INFINITY) {
      fmx = fmaxf(fmx, v);
      fmn = fminf(fmn, v);
    }
  });
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(kFull, best, o);
    const int32_t oi = __shfl_xor_sync(kFull, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) {
      best = ob;
      best_i = oi;
    }
    fmx = fmaxf(fmx, __shfl_xor_sync(kFull, fmx, o));
    fmn = fminf(fmn, __shfl_xor_sync(kFull, fmn, o));
  }
  if (Lane() == 0) {
    sh.red_f[Warp()] = best;
    sh.red_i[Warp()] = best_i;
    sh.red_f2[Warp()] = fmx;
    sh.red_f3[Warp()] = fmn;
  }
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    const float ob = sh.red_f[w];
    const int32_t oi = sh.red_i[w];
    if (ob > best || (ob == best && oi < best_i)) {
      best = ob;
      best_i = oi;
    }
    fmx = fmaxf(fmx, sh.red_f2[w]);
    fmn = fminf(fmn, sh.red_f3[w]);
  }
  ncand = BlockSum(ncand, sh);  // (its syncs also end the reads of red_f*)

  if (greedy || best == -INFINITY) {
    if (threadIdx.x == 0) p.out_tokens[r] = best == -INFINITY ? 0 : best_i;
    return;
  }
  const double u = SamplingCounterUniform(p.seed != nullptr ? p.seed[r] : 0,
                                          p.counter != nullptr ? p.counter[r] : 0);
  Row row;
  row.x = x;
  row.n = n;
  row.use_list = false;
  row.w = Weigher{best == INFINITY, best, 1.0 / static_cast<double>(t)};
  const bool has_finite = fmx >= fmn;
  row.bin0 = Bin0{has_finite ? static_cast<double>(fmx) : 0.0,
                  has_finite && fmx > fmn ? 254.0 / (static_cast<double>(fmx) - fmn) : 0.0};
  const bool use_k = top_k > 0;
  const bool use_p = top_p < 1.0f;
  const int32_t token = (!use_k && !use_p)
                            ? SamplePlain(row, sh, u)
                            : SampleSorted(row, sh, ncand, use_k, top_k, use_p, top_p, u);
  // token < 0 only if the row had no positive weight, which the max (weight 1) rules out.
  if (threadIdx.x == 0) p.out_tokens[r] = token >= 0 ? token : best_i;
}

}  // namespace

cudaError_t LaunchSampleTokens(const SampleTokensParams& p, cudaStream_t stream) {
  const int64_t stride = p.logits_stride > 0 ? p.logits_stride : p.vocab;
  SampleTokensKernel<<<p.rows, kThreads, 0, stream>>>(p, stride);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
