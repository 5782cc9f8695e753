#include "worker/tp_eviction.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace kvc {
namespace {

// The planner's order-preserving float -> uint32 map (for non-NaN input); -0 and +0 share a key.
inline uint32_t ScoreKey(float score) {
  if (score == 0.0f) score = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<KvHeadSharding> KvHeadSharding::Create(int32_t num_kv_heads, int32_t world_size) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel must be >= 1, got ", world_size));
  }
  if (num_kv_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_key_value_heads must be >= 1, got ", num_kv_heads));
  }
  if (num_kv_heads % world_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel ", world_size, " must divide num_key_value_heads ",
                     num_kv_heads, " (each rank owns whole KV heads and their query groups)"));
  }
  KvHeadSharding s;
  s.num_kv_heads = num_kv_heads;
  s.world_size = world_size;
  return s;
}

DistributedEvictionPlanner::DistributedEvictionPlanner(Communicator* comm, KvHeadSharding sharding)
    : comm_(comm), sharding_(sharding) {
  KVC_CHECK(comm_ != nullptr);
}

int64_t DistributedEvictionPlanner::BlocksWithin(int32_t h, int64_t c, int32_t block_size) const {
  const HeadInfo& info = heads_[h];
  if (info.kmax == 0 || c < info.r) return 0;
  return std::min<int64_t>(info.kmax, (c - info.r) / block_size + 1);
}

void DistributedEvictionPlanner::Gather(const KvLayout& layout, const SequenceBlockTables& tables,
                                        const KvSlotReader& reader, int64_t num_tokens,
                                        const EvictionConstraints& constraints) {
  const int32_t b = layout.block_size;
  const int64_t pos_lo = constraints.sink_tokens;
  const int64_t pos_hi = num_tokens - constraints.protected_window;
  const int64_t keep_blocks = CeilDiv(constraints.min_kvs_per_head, b);
  entries_.clear();
  heads_.assign(layout.heads_per_seq(), HeadInfo{});
  block_scores_.resize(b);
  block_positions_.resize(b);
  if (pos_hi <= pos_lo) return;
  for (const int32_t h : own_) {
    const HeadBlockTable& head = tables.heads[h];
    HeadInfo& info = heads_[h];
    info.n = head.num_kvs;
    info.begin = info.end = static_cast<int64_t>(entries_.size());
    if (info.n == 0) continue;
    const int32_t nb = static_cast<int32_t>(head.blocks.size());
    info.r = (info.n - 1) % b + 1;
    const int64_t kmax_min = std::max<int64_t>(0, nb - keep_blocks);
    if (kmax_min == 0) continue;
    for (int32_t bi = 0; bi < nb; ++bi) {
      const int32_t count = bi == nb - 1 ? info.r : b;
      reader.ReadBlock(head.blocks[bi], count, block_scores_.data(), block_positions_.data());
      for (int32_t off = 0; off < count; ++off) {
        const float s = block_scores_[off];
        const int32_t pos = block_positions_[off];
        if (pos < pos_lo || pos >= pos_hi || std::isnan(s) ||
            s == std::numeric_limits<float>::infinity()) {
          continue;
        }
        entries_.push_back(Entry{ScoreKey(s), pos, bi * b + off});
      }
    }
    const int64_t e = static_cast<int64_t>(entries_.size()) - info.begin;
    const int64_t kmax_evictable = e >= info.r ? (e - info.r) / b + 1 : 0;
    info.kmax = static_cast<int32_t>(std::min(kmax_min, kmax_evictable));
    if (info.kmax == 0) {
      entries_.resize(info.begin);
    } else {
      info.end = static_cast<int64_t>(entries_.size());
    }
  }
}

absl::Status DistributedEvictionPlanner::ChooseBlockCounts(const KvLayout& layout,
                                                           int64_t evict_blocks,
                                                           std::vector<int32_t>* k) {
  const int32_t num_heads = layout.heads_per_seq();
  const int32_t b = layout.block_size;
  k->assign(num_heads, 0);

  // (1) Blocks available over all heads.
  int64_t available = 0;
  for (const int32_t h : own_) available += heads_[h].kmax;
  RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(&available, 1)));

  // Per head index: (blocks below tau, blocks at tau) — or (kmax, 0) when everything goes.
  reduce_.assign(2 * static_cast<size_t>(num_heads), 0);
  if (evict_blocks >= available) {
    for (const int32_t h : own_) reduce_[2 * h] = heads_[h].kmax;
  } else {
    // (2) Radix select of tau, 4 passes of 8 bits; every pass reduces per-digit block counts.
    const size_t num_own = own_.size();
    base_.assign(num_heads, 0);
    ties_.assign(num_heads, 0);
    std::vector<int64_t> totals(256);
    uint32_t prefix = 0;
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      hist_.assign(num_own * 256, 0);
      for (size_t i = 0; i < num_own; ++i) {
        const HeadInfo& info = heads_[own_[i]];
        int64_t* hist = hist_.data() + i * 256;
        for (int64_t e = info.begin; e < info.end; ++e) {
          const uint32_t key = entries_[e].key;
          if (pass == 0 || (key >> (shift + 8)) == prefix) ++hist[(key >> shift) & 0xFFu];
        }
      }
      std::fill(totals.begin(), totals.end(), 0);
      for (size_t i = 0; i < num_own; ++i) {
        const int32_t h = own_[i];
        if (heads_[h].kmax == 0) continue;
        int64_t cum = base_[h];
        const int64_t* hist = hist_.data() + i * 256;
        for (int d = 0; d < 256; ++d) {
          cum += hist[d];
          totals[d] += BlocksWithin(h, cum, b);
        }
      }
      RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(totals)));
      int digit = 0;
      while (digit < 256 && totals[digit] < evict_blocks) ++digit;
      // available > evict_blocks, and the last digit of the range counts every candidate pair
      // (the range's upper bound is the previous pass's tau candidate, which reached B).
      KVC_CHECK_LT(digit, 256) << "radix select found no threshold";
      for (size_t i = 0; i < num_own; ++i) {
        const int32_t h = own_[i];
        const int64_t* hist = hist_.data() + i * 256;
        for (int d = 0; d < digit; ++d) base_[h] += hist[d];
        ties_[h] = hist[digit];
      }
      prefix = (prefix << 8) | static_cast<uint32_t>(digit);
    }
    for (const int32_t h : own_) {
      const int64_t below = BlocksWithin(h, base_[h], b);
      reduce_[2 * h] = below;
      reduce_[2 * h + 1] = BlocksWithin(h, base_[h] + ties_[h], b) - below;
    }
  }
  // (3) Every head's share, on every rank.
  RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(reduce_)));
  int64_t remaining = std::min(evict_blocks, available);
  for (int32_t h = 0; h < num_heads; ++h) {
    (*k)[h] = static_cast<int32_t>(reduce_[2 * h]);
    remaining -= reduce_[2 * h];
  }
  KVC_CHECK_GE(remaining, 0);
  for (int32_t h = 0; h < num_heads && remaining > 0; ++h) {
    const int64_t add = std::min(remaining, reduce_[2 * h + 1]);
    (*k)[h] += static_cast<int32_t>(add);
    remaining -= add;
  }
  KVC_CHECK_EQ(remaining, 0);
  return absl::OkStatus();
}

EvictionPlan DistributedEvictionPlanner::EmitLocal(const KvLayout& layout,
                                                   const SequenceBlockTables& tables,
                                                   const std::vector<int32_t>& k) {
  const int32_t b = layout.block_size;
  EvictionPlan plan;
  std::vector<std::pair<int32_t, int32_t>> scratch_moves;
  auto before = [](const Entry& x, const Entry& y) {
    if (x.key != y.key) return x.key < y.key;
    if (x.position != y.position) return x.position < y.position;
    return x.slot < y.slot;
  };
  for (const int32_t h : own_) {
    if (k[h] == 0) continue;
    const HeadInfo& info = heads_[h];
    const HeadBlockTable& head = tables.heads[h];
    KVC_CHECK_LE(k[h], info.kmax);
    HeadEviction ev;
    ev.head_index = h;
    ev.num_kvs_before = info.n;
    ev.blocks_freed = k[h];
    ev.kvs_evicted = (k[h] - 1) * b + info.r;
    auto first = entries_.begin() + info.begin;
    auto last = entries_.begin() + info.end;
    KVC_CHECK_LE(ev.kvs_evicted, last - first);
    std::nth_element(first, first + (ev.kvs_evicted - 1), last, before);
    ev.evicted_slots.resize(ev.kvs_evicted);
    for (int32_t i = 0; i < ev.kvs_evicted; ++i) ev.evicted_slots[i] = first[i].slot;
    std::sort(ev.evicted_slots.begin(), ev.evicted_slots.end());
    const int32_t nb = static_cast<int32_t>(head.blocks.size());
    ev.freed_blocks.assign(head.blocks.begin() + (nb - ev.blocks_freed), head.blocks.end());
    scratch_moves.clear();
    CompactionMoves(ev.evicted_slots, head.num_kvs, &scratch_moves);
    ev.moves.resize(scratch_moves.size());
    for (size_t i = 0; i < scratch_moves.size(); ++i) {
      const auto [src, dst] = scratch_moves[i];
      KvMove& m = ev.moves[i];
      m.src_slot = src;
      m.dst_slot = dst;
      m.src_block = head.blocks[src / b];
      m.src_offset = src % b;
      m.dst_block = head.blocks[dst / b];
      m.dst_offset = dst % b;
    }
    plan.blocks_freed += ev.blocks_freed;
    plan.kvs_evicted += ev.kvs_evicted;
    plan.num_moves += static_cast<int64_t>(ev.moves.size());
    plan.heads.push_back(std::move(ev));
  }
  return plan;
}

absl::StatusOr<RankEvictionPlan> DistributedEvictionPlanner::Plan(
    const KvLayout& layout, const SequenceBlockTables& tables, const KvSlotReader& reader,
    int64_t num_tokens, int64_t evict_blocks, const EvictionConstraints& constraints) {
  // Argument checks first, on replicated inputs only: every rank reaches the same verdict before
  // any collective.
  if (evict_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("evict_blocks must be >= 0, got ", evict_blocks));
  }
  RETURN_IF_ERROR(ValidateEvictionInput(layout, tables, num_tokens, constraints));
  if (sharding_.num_kv_heads != layout.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("sharding is for ", sharding_.num_kv_heads,
                                                   " KV heads, the layout has ",
                                                   layout.num_kv_heads));
  }
  if (comm_->world_size() != sharding_.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("sharding is for ", sharding_.world_size,
                                                   " ranks, the communicator has ",
                                                   comm_->world_size()));
  }
  own_.clear();
  const int32_t rank = comm_->rank();
  for (int32_t l = 0; l < layout.num_layers; ++l) {
    for (int32_t j = 0; j < sharding_.heads_per_rank(); ++j) {
      own_.push_back(layout.HeadIndex(l, sharding_.first_kv_head(rank) + j));
    }
  }
  RankEvictionPlan out;
  out.blocks_per_head.assign(layout.heads_per_seq(), 0);
  out.local.blocks_requested = evict_blocks;
  if (evict_blocks == 0) return out;  // the same on every rank: no collective

  Gather(layout, tables, reader, num_tokens, constraints);
  std::vector<int32_t> k;
  RETURN_IF_ERROR(ChooseBlockCounts(layout, evict_blocks, &k));
  out.local = EmitLocal(layout, tables, k);
  out.local.blocks_requested = evict_blocks;
  out.blocks_per_head = std::move(k);
  return out;
}

absl::StatusOr<EvictionPlan> MergeRankPlans(std::span<const EvictionPlan> local_plans) {
  EvictionPlan merged;
  if (local_plans.empty()) return merged;
  merged.blocks_requested = local_plans[0].blocks_requested;
  for (size_t r = 0; r < local_plans.size(); ++r) {
    const EvictionPlan& p = local_plans[r];
    if (p.blocks_requested != merged.blocks_requested) {
      return absl::InvalidArgumentError(absl::StrCat("local_plans[", r, "] requests ",
                                                     p.blocks_requested, " blocks, local_plans[0] ",
                                                     merged.blocks_requested));
    }
    merged.blocks_freed += p.blocks_freed;
    merged.kvs_evicted += p.kvs_evicted;
    merged.num_moves += p.num_moves;
    merged.heads.insert(merged.heads.end(), p.heads.begin(), p.heads.end());
  }
  std::sort(
      merged.heads.begin(), merged.heads.end(),
      [](const HeadEviction& a, const HeadEviction& b) { return a.head_index < b.head_index; });
  for (size_t i = 1; i < merged.heads.size(); ++i) {
    if (merged.heads[i].head_index == merged.heads[i - 1].head_index) {
      return absl::InvalidArgumentError(
          absl::StrCat("head index ", merged.heads[i].head_index, " appears in two local plans"));
    }
  }
  return merged;
}

}  // namespace kvc
