// Device-side KV-Compress eviction of one sequence (eviction.h): the global radix select of the
// cost threshold, the per-head selection and the compaction moves. Launches of one call:
//   memset   out [H + 1], workspace [0, zeroed)
//   HistKernel  pass 0..3, grid (ceil(max_n / 2048), H), 256 threads: per-head 256-bin histogram
//               of byte (3 - pass) of the 32-bit score key of the evictable KVs whose higher bytes
//               equal the threshold prefix (shared-memory bins, warp-aggregated increments)
//   ScanKernel  pass 0..3, one CTA of 1024 threads: pass 0 first derives r, kmax per head and
//               takes every block if B >= sum kmax; each pass picks the threshold's next digit
//               and moves the per-head counts; pass 3 distributes the ties and writes k
//   HeadKernel  grid H, 256 threads: per-head radix select (64-bit key), ordered sweep (bitmap,
//               ranks), moves
// The order of the (score, position, slot) keys is the host planner's (kvmanager/eviction_plan.cc)
// bit for bit: ScoreKey maps -0 to +0 and is monotone on non-NaN floats, positions of evictable
// KVs are >= 0 (so unsigned order is signed order), and slot ties are broken by the sweep order.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/eviction_launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kHistThreads = 256;
constexpr int kHistSlotsPerCta = 2048;
constexpr int kScanThreads = 1024;
constexpr int kHeadThreads = 256;
constexpr uint64_t kNotEvictable = ~0ull;  // above every real key (real score keys < 0xFF800000)

// Device pointers into the workspace.
struct Ws {
  uint32_t* hist;  // [4][H][256]
  int32_t* r;      // [H]
  int32_t* kmax;
  int32_t* base;
  int32_t* at;
  uint32_t* prefix;  // [1]
  int32_t* done;     // [1]
  uint32_t* mask;    // [H][words]
  int32_t* hole_rank;
  int32_t* surv_rank;
  int32_t words;
};

// Order-preserving map float -> uint32 for non-NaN input; -0 and +0 share a key.
__device__ __forceinline__ uint32_t ScoreKey(float s) {
  uint32_t bits = __float_as_uint(s);
  if ((bits & 0x7fffffffu) == 0) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Blocks a head can free when its `c` cheapest evictable KVs may go (host: blocks_within).
__device__ __forceinline__ int64_t BlocksWithin(int64_t c, int32_t r, int32_t kmax, int32_t b) {
  if (c < r) return 0;
  const int64_t j = (c - r) / b + 1;
  return j < kmax ? j : kmax;
}

// Head h's KV count (clamped to max_num_kvs) and block list; flags a bad count.
__device__ __forceinline__ int32_t HeadCount(const KvCompressParams& p, int h) {
  int32_t n = p.tables.num_kvs[h];
  if (n < 0 || n > p.tables.max_num_kvs) {
    if (threadIdx.x == 0) atomicOr(&p.out[p.tables.num_kv_heads], kKvCompressBadTable);
    n = n < 0 ? 0 : p.tables.max_num_kvs;
  }
  return n;
}

// Physical slot of logical slot i of a head, or -1 for an out-of-range block id.
__device__ __forceinline__ int64_t PhysicalSlot(const KvCompressParams& p, const int32_t* blocks,
                                                int32_t i) {
  const int32_t b = p.cache.block_size;
  const int32_t id = blocks[i / b];
  if (id < 0 || id >= p.cache.num_blocks) return -1;
  return static_cast<int64_t>(id) * b + i % b;
}

// 64-bit key (score key, position) of logical slot i of a head, kNotEvictable when the KV may not
// be evicted (protected window, sink, NaN or +inf score) or its block id is out of range (*bad).
__device__ __forceinline__ uint64_t SlotKey(const KvCompressParams& p, const int32_t* blocks,
                                            int32_t i, int64_t pos_lo, int64_t pos_hi, bool* bad) {
  const int64_t slot = PhysicalSlot(p, blocks, i);
  if (slot < 0) {
    *bad = true;
    return kNotEvictable;
  }
  const float s = p.cache.scores[slot];
  const int32_t pos = p.cache.positions[slot];
  if (pos < pos_lo || pos >= pos_hi || isnan(s) || s == __int_as_float(0x7f800000)) {
    return kNotEvictable;
  }
  return (static_cast<uint64_t>(ScoreKey(s)) << 32) | static_cast<uint32_t>(pos);
}

// Adds one to hist[digit] for every lane with digit >= 0 (warp-aggregated: one shared atomic per
// distinct digit). All 32 lanes must call it.
__device__ __forceinline__ void HistAdd(uint32_t* hist, int digit) {
  const unsigned peers = __match_any_sync(kFullMask, digit);
  if (digit >= 0 && static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1) {
    atomicAdd(&hist[digit], static_cast<uint32_t>(__popc(peers)));
  }
}

template <typename T>
__device__ __forceinline__ T WarpInclusiveScan(T v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T t = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Exclusive prefix sum over the CTA (kThreads threads, all must call); *total = the CTA's sum.
// smem: kThreads / 32 entries. Contains __syncthreads().
template <int kThreads, typename T>
__device__ __forceinline__ T BlockExclusiveScan(T v, T* total, T* smem) {
  constexpr int kWarps = kThreads / 32;
  static_assert(kWarps <= 32, "one warp scans the warp totals");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T incl = WarpInclusiveScan(v);
  if (lane == 31) smem[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    T x = lane < kWarps ? smem[lane] : T(0);
    x = WarpInclusiveScan(x);
    if (lane < kWarps) smem[lane] = x;
  }
  __syncthreads();
  const T before = warp > 0 ? smem[warp - 1] : T(0);
  *total = smem[kWarps - 1];
  __syncthreads();  // smem may be reused by the next call
  return before + incl - v;
}

// ---- global radix select ----------------------------------------------------------------------

__global__ void __launch_bounds__(kHistThreads)
    HistKernel(const __grid_constant__ KvCompressParams p, const Ws w, int pass, int64_t pos_lo,
               int64_t pos_hi) {
  const int h = blockIdx.y;
  const int num_heads = p.tables.num_kv_heads;
  if (pass > 0 && (*w.done != 0 || w.kmax[h] == 0)) return;
  const int32_t n = HeadCount(p, h);
  const int32_t begin = blockIdx.x * kHistSlotsPerCta;
  if (begin >= n) return;
  const int32_t end = min(n, begin + kHistSlotsPerCta);
  const int32_t* blocks = p.tables.block_ids + p.tables.table_offsets[h];
  const uint32_t prefix = pass > 0 ? *w.prefix : 0u;
  const int shift = 24 - 8 * pass;

  __shared__ uint32_t hist[256];
  hist[threadIdx.x] = 0;
  __syncthreads();
  bool bad = false;
  for (int32_t base = begin; base < end; base += kHistThreads) {
    const int32_t i = base + threadIdx.x;
    int digit = -1;
    if (i < end) {
      const uint64_t key = SlotKey(p, blocks, i, pos_lo, pos_hi, &bad);
      if (key != kNotEvictable) {
        const uint32_t k32 = static_cast<uint32_t>(key >> 32);
        if (pass == 0 || (k32 >> (shift + 8)) == prefix) digit = (k32 >> shift) & 0xff;
      }
    }
    HistAdd(hist, digit);
  }
  if (bad) atomicOr(&p.out[num_heads], kKvCompressBadTable);
  __syncthreads();
  const uint32_t c = hist[threadIdx.x];
  if (c != 0) {
    atomicAdd(&w.hist[(static_cast<int64_t>(pass) * num_heads + h) * 256 + threadIdx.x], c);
  }
}

__global__ void __launch_bounds__(kScanThreads)
    ScanKernel(const __grid_constant__ KvCompressParams p, const Ws w, int pass) {
  constexpr int kWarps = kScanThreads / 32;
  const int num_heads = p.tables.num_kv_heads;
  const int32_t b = p.cache.block_size;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t want = p.evict_blocks;
  __shared__ unsigned long long total[256];
  __shared__ unsigned long long available;
  __shared__ int selected;
  __shared__ long long scan_smem[kWarps];
  if (*w.done != 0) return;
  const uint32_t* hist = w.hist + static_cast<int64_t>(pass) * num_heads * 256;

  if (pass == 0) {
    // Per-head r and kmax (host: Gather). The pass-0 histogram counts every evictable KV.
    if (tid == 0) available = 0;
    __syncthreads();
    const int64_t keep_blocks = (static_cast<int64_t>(p.min_kvs_per_head) + b - 1) / b;
    for (int h = warp; h < num_heads; h += kWarps) {
      uint32_t e = 0;
      for (int d = lane; d < 256; d += 32) e += hist[h * 256 + d];
      e = WarpSum(e);
      if (lane == 0) {
        int32_t n = p.tables.num_kvs[h];
        n = n < 0 ? 0 : (n > p.tables.max_num_kvs ? p.tables.max_num_kvs : n);
        const int32_t nb = (n + b - 1) / b;
        const int32_t r = n > 0 ? (n - 1) % b + 1 : 0;
        const int64_t kmax_min = nb > keep_blocks ? nb - keep_blocks : 0;
        const int64_t kmax_evictable =
            (n > 0 && static_cast<int64_t>(e) >= r) ? (static_cast<int64_t>(e) - r) / b + 1 : 0;
        const int32_t kmax =
            static_cast<int32_t>(kmax_min < kmax_evictable ? kmax_min : kmax_evictable);
        w.r[h] = r;
        w.kmax[h] = kmax;
        w.base[h] = 0;
        w.at[h] = 0;
        atomicAdd(&available, static_cast<unsigned long long>(kmax));
      }
    }
    __syncthreads();
    if (want >= static_cast<int64_t>(available)) {  // every candidate block goes
      for (int h = tid; h < num_heads; h += kScanThreads) p.out[h] = w.kmax[h];
      if (tid == 0) *w.done = 1;
      return;
    }
  }

  // total[d] = sum over heads of blocks_within(head, #keys below the prefix range + #keys with
  // this pass's digit <= d).
  for (int d = tid; d < 256; d += kScanThreads) total[d] = 0;
  __syncthreads();
  for (int h = warp; h < num_heads; h += kWarps) {
    const int32_t kmax = w.kmax[h];
    if (kmax == 0) continue;
    const int32_t r = w.r[h];
    const int64_t base = w.base[h];
    uint32_t v[8];
    uint32_t s = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      s += hist[h * 256 + lane * 8 + j];
      v[j] = s;
    }
    const uint32_t before = WarpInclusiveScan(s) - s;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t bw = BlocksWithin(base + before + v[j], r, kmax, b);
      if (bw != 0) atomicAdd(&total[lane * 8 + j], static_cast<unsigned long long>(bw));
    }
  }
  if (tid == 0) selected = 256;
  __syncthreads();
  if (tid < 256 && static_cast<int64_t>(total[tid]) >= want) atomicMin(&selected, tid);
  __syncthreads();
  const int digit = selected;
  if (digit == 256) {  // cannot happen: total[255] of a pass >= B (pass 0: available > B)
    if (tid == 0) {
      atomicOr(&p.out[num_heads], kKvCompressNoThreshold);
      *w.done = 1;
    }
    return;
  }
  for (int h = warp; h < num_heads; h += kWarps) {
    if (w.kmax[h] == 0) continue;
    uint32_t below = 0;
    for (int d = lane; d < digit; d += 32) below += hist[h * 256 + d];
    below = WarpSum(below);
    if (lane == 0) {
      w.base[h] += static_cast<int32_t>(below);
      w.at[h] = static_cast<int32_t>(hist[h * 256 + digit]);
    }
  }
  if (tid == 0) *w.prefix = (*w.prefix << 8) | static_cast<uint32_t>(digit);
  if (pass < 3) return;

  // Threshold tau = the full prefix. Every pair cheaper than tau, then the pairs costing exactly
  // tau by (head index, j) until B.
  __syncthreads();
  __shared__ unsigned long long taken;
  if (tid == 0) taken = 0;
  __syncthreads();
  for (int h = tid; h < num_heads; h += kScanThreads) {
    const int64_t k = BlocksWithin(w.base[h], w.r[h], w.kmax[h], b);
    p.out[h] = static_cast<int32_t>(k);
    if (k != 0) atomicAdd(&taken, static_cast<unsigned long long>(k));
  }
  __syncthreads();
  const int64_t remaining = want - static_cast<int64_t>(taken);
  long long carry = 0;
  for (int start = 0; start < num_heads; start += kScanThreads) {
    const int h = start + tid;
    long long extra = 0;
    if (h < num_heads) {
      extra = BlocksWithin(static_cast<int64_t>(w.base[h]) + w.at[h], w.r[h], w.kmax[h], b) -
              BlocksWithin(w.base[h], w.r[h], w.kmax[h], b);
    }
    long long chunk_total;
    const long long before =
        carry + BlockExclusiveScan<kScanThreads>(extra, &chunk_total, scan_smem);
    if (h < num_heads && extra > 0 && before < remaining) {
      const long long add = remaining - before < extra ? remaining - before : extra;
      p.out[h] += static_cast<int32_t>(add);
    }
    carry += chunk_total;
  }
  if (tid == 0 && (remaining <= 0 || carry < remaining)) {
    atomicOr(&p.out[num_heads], kKvCompressBadCount);
  }
}

// ---- per-head selection and compaction --------------------------------------------------------

// The rank-th set bit (0-based) over the words [w_lo, w_hi) of a bitmap whose word w holds
// bits(w) and rank[w] set bits before it; returns the logical slot.
template <typename Bits>
__device__ __forceinline__ int32_t SelectRank(const int32_t* rank, int32_t w_lo, int32_t w_hi,
                                              int32_t q, Bits bits) {
  int32_t lo = w_lo, hi = w_hi - 1;
  while (lo < hi) {  // last word with rank[word] <= q
    const int32_t mid = (lo + hi + 1) >> 1;
    if (rank[mid] <= q) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  uint32_t word = bits(lo);
  for (int32_t j = q - rank[lo]; j > 0; --j) word &= word - 1;
  return lo * 32 + (__ffs(word) - 1);
}

// Bits of slots [from, to) within word w (from/to are logical slots).
__device__ __forceinline__ uint32_t RangeBits(int32_t w, int32_t from, int32_t to) {
  auto below = [](int32_t x) -> uint32_t {  // bits of offsets < x
    return x <= 0 ? 0u : (x >= 32 ? kFullMask : ((1u << x) - 1u));
  };
  return below(to - w * 32) & ~below(from - w * 32);
}

__global__ void __launch_bounds__(kHeadThreads)
    HeadKernel(const __grid_constant__ KvCompressParams p, const Ws w, int64_t pos_lo,
               int64_t pos_hi) {
  const int h = blockIdx.x;
  const int num_heads = p.tables.num_kv_heads;
  const int32_t k = p.out[h];
  if (k <= 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t b = p.cache.block_size;
  const int32_t n = HeadCount(p, h);
  const int32_t* blocks = p.tables.block_ids + p.tables.table_offsets[h];
  const int32_t c = (k - 1) * b + w.r[h];  // KVs to evict
  const int32_t n_keep = n - c;            // n'

  __shared__ uint32_t hist[256];
  __shared__ int32_t scan_smem[kHeadThreads / 32];
  __shared__ int32_t sel_digit, sel_before, sel_count;
  bool bad = false;

  // Radix select of the c-th lowest 64-bit key, 8 bits per pass, stopping as soon as the keys
  // at or below the prefix number exactly c.
  uint64_t prefix = 0;
  int32_t less = 0;  // keys whose examined bits are below the prefix
  int shift = 64;
  for (int pass = 0; pass < 8; ++pass) {
    shift = 56 - 8 * pass;
    hist[tid] = 0;
    if (tid == 0) sel_digit = -1;
    __syncthreads();
    for (int32_t base = 0; base < n; base += kHeadThreads) {
      const int32_t i = base + tid;
      int digit = -1;
      if (i < n) {
        const uint64_t key = SlotKey(p, blocks, i, pos_lo, pos_hi, &bad);
        if (key != kNotEvictable && (pass == 0 || (key >> (shift + 8)) == prefix)) {
          digit = static_cast<int>((key >> shift) & 0xff);
        }
      }
      HistAdd(hist, digit);
    }
    __syncthreads();
    const int32_t count = static_cast<int32_t>(hist[tid]);
    int32_t all;
    const int32_t before = BlockExclusiveScan<kHeadThreads>(count, &all, scan_smem);
    const int32_t need = c - less;
    if (before < need && before + count >= need) {  // exactly one digit
      sel_digit = tid;
      sel_before = before;
      sel_count = count;
    }
    __syncthreads();
    if (sel_digit < 0) {
      if (tid == 0) atomicOr(&p.out[num_heads], kKvCompressNoHeadSelect);
      return;
    }
    prefix = (prefix << 8) | static_cast<uint64_t>(sel_digit);
    less += sel_before;
    const bool exact = less + sel_count == c;
    __syncthreads();  // sel_* are rewritten by the next pass
    if (exact) break;
  }
  const int32_t need_equal = c - less;  // keys equal to the prefix to evict, lowest slots first

  // Ordered sweep: evicted flags, their bitmap and per-word ranks of holes below n' and of
  // survivors at or above n'.
  uint32_t* mask = w.mask + static_cast<int64_t>(h) * w.words;
  int32_t* hole_rank = w.hole_rank + static_cast<int64_t>(h) * w.words;
  int32_t* surv_rank = w.surv_rank + static_cast<int64_t>(h) * w.words;
  int32_t equal_seen = 0, holes = 0, survivors = 0;
  for (int32_t base = 0; base < n; base += kHeadThreads) {
    const int32_t i = base + tid;
    const bool valid = i < n;
    const uint64_t key = valid ? SlotKey(p, blocks, i, pos_lo, pos_hi, &bad) : kNotEvictable;
    const bool evictable = key != kNotEvictable;
    const uint64_t top = key >> shift;
    const bool lower = evictable && top < prefix;
    const bool equal = evictable && top == prefix;
    int32_t equal_total;
    const int32_t equal_rank =
        equal_seen +
        BlockExclusiveScan<kHeadThreads>(static_cast<int32_t>(equal), &equal_total, scan_smem);
    equal_seen += equal_total;
    const bool evicted = lower || (equal && equal_rank < need_equal);
    const bool hole = evicted && i < n_keep;
    const bool survivor = valid && !evicted && i >= n_keep;
    int32_t packed_total;  // holes << 16 | survivors (at most 256 each per chunk)
    const int32_t packed = BlockExclusiveScan<kHeadThreads>(
        (static_cast<int32_t>(hole) << 16) | static_cast<int32_t>(survivor), &packed_total,
        scan_smem);
    const unsigned bits = __ballot_sync(kFullMask, evicted);
    if (lane == 0 && i < n) {
      const int32_t word = i >> 5;
      mask[word] = bits;
      hole_rank[word] = holes + (packed >> 16);
      surv_rank[word] = survivors + (packed & 0xffff);
    }
    holes += packed_total >> 16;
    survivors += packed_total & 0xffff;
  }
  if (bad && tid == 0) atomicOr(&p.out[num_heads], kKvCompressBadTable);
  if (holes != survivors) {
    if (tid == 0) atomicOr(&p.out[num_heads], kKvCompressBadMoves);
    return;
  }
  __syncthreads();  // the bitmap and ranks are visible to the whole CTA

  // Moves: the q-th hole below n' (ascending) receives the q-th survivor at or above n'
  // counted from the top (CompactionMoves). Destinations < n' <= sources: no move reads a slot
  // another one writes, so they all run at once. A warp resolves 32 moves, then copies them.
  const int32_t num_moves = holes;
  const int32_t hole_words = (n_keep + 31) >> 5;
  const int32_t surv_word_lo = n_keep >> 5, surv_word_hi = (n + 31) >> 5;
  const int32_t d = p.cache.head_dim;
  const int32_t chunks = d / 8;  // 16-byte chunks per row
  for (int32_t first = warp * 32; first < num_moves; first += kHeadThreads) {
    const int32_t q = first + lane;
    int64_t src = -1, dst = -1;
    if (q < num_moves) {
      const int32_t dst_slot = SelectRank(hole_rank, 0, hole_words, q, [&](int32_t wd) {
        return mask[wd] & RangeBits(wd, 0, n_keep);
      });
      const int32_t src_slot =
          SelectRank(surv_rank, surv_word_lo, surv_word_hi, num_moves - 1 - q,
                     [&](int32_t wd) { return ~mask[wd] & RangeBits(wd, n_keep, n); });
      if (dst_slot >= 0 && dst_slot < n_keep && src_slot >= n_keep && src_slot < n) {
        src = PhysicalSlot(p, blocks, src_slot);
        dst = PhysicalSlot(p, blocks, dst_slot);
      } else {
        atomicOr(&p.out[num_heads], kKvCompressBadMoves);
      }
    }
    const int32_t count = min(32, num_moves - first);
    for (int32_t j = 0; j < count; ++j) {
      const int64_t s = __shfl_sync(kFullMask, src, j);
      const int64_t t = __shfl_sync(kFullMask, dst, j);
      if (s < 0 || t < 0) continue;  // warp-uniform
      for (int32_t x = lane; x < 2 * chunks; x += 32) {
        const bool is_v = x >= chunks;
        Bf16* rows = is_v ? p.cache.v : p.cache.k;
        const int32_t cidx = is_v ? x - chunks : x;
        const uint4 val = *reinterpret_cast<const uint4*>(rows + s * d + cidx * 8);
        *reinterpret_cast<uint4*>(rows + t * d + cidx * 8) = val;
      }
      if (lane == 0) {
        p.cache.scores[t] = p.cache.scores[s];
        p.cache.positions[t] = p.cache.positions[s];
      }
    }
  }
}

}  // namespace

cudaError_t LaunchKvCompressEvict(const KvCompressParams& p, cudaStream_t stream) {
  const int32_t num_heads = p.tables.num_kv_heads;
  const KvCompressWorkspaceLayout layout = KvCompressWorkspace(num_heads, p.tables.max_num_kvs);
  char* ws = static_cast<char*>(p.workspace);
  Ws w;
  w.hist = reinterpret_cast<uint32_t*>(ws + layout.hist);
  int32_t* heads = reinterpret_cast<int32_t*>(ws + layout.heads);
  w.r = heads;
  w.kmax = heads + num_heads;
  w.base = heads + 2 * num_heads;
  w.at = heads + 3 * num_heads;
  w.prefix = reinterpret_cast<uint32_t*>(ws + layout.globals);
  w.done = reinterpret_cast<int32_t*>(ws + layout.globals) + 1;
  w.mask = reinterpret_cast<uint32_t*>(ws + layout.mask);
  w.hole_rank = reinterpret_cast<int32_t*>(ws + layout.hole_rank);
  w.surv_rank = reinterpret_cast<int32_t*>(ws + layout.surv_rank);
  w.words = layout.words;

  // Evictable positions: [sink_tokens, num_tokens - protected_window).
  const int64_t pos_lo = p.sink_tokens;
  const int64_t pos_hi = p.num_tokens - p.protected_window;

  cudaError_t err = cudaMemsetAsync(ws, 0, layout.zeroed, stream);
  if (err != cudaSuccess) return err;
  const dim3 hist_grid((p.tables.max_num_kvs + kHistSlotsPerCta - 1) / kHistSlotsPerCta, num_heads);
  for (int pass = 0; pass < 4; ++pass) {
    HistKernel<<<hist_grid, kHistThreads, 0, stream>>>(p, w, pass, pos_lo, pos_hi);
    ScanKernel<<<1, kScanThreads, 0, stream>>>(p, w, pass);
  }
  HeadKernel<<<num_heads, kHeadThreads, 0, stream>>>(p, w, pos_lo, pos_hi);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
