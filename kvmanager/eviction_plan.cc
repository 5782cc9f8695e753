#include "kvmanager/eviction_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvc {
namespace {

// Order-preserving map float -> uint32 (for non-NaN input); -0 and +0 map to the same key so the
// order agrees with float comparison.
inline uint32_t ScoreKey(float score) {
  if (score == 0.0f) score = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks the tables against the layout (shared by Plan and PlanFromBlockCounts).
absl::Status ValidateTables(const KvLayout& layout, const SequenceBlockTables& tables,
                            int64_t num_tokens) {
  if (layout.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.block_size must be > 0, got ", layout.block_size));
  }
  if (static_cast<int64_t>(tables.heads.size()) != layout.heads_per_seq()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tables have ", tables.heads.size(), " heads, layout needs ", layout.heads_per_seq()));
  }
  for (size_t h = 0; h < tables.heads.size(); ++h) {
    const HeadBlockTable& head = tables.heads[h];
    if (head.num_kvs < 0 || head.num_kvs > num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("head index ", h, " holds ", head.num_kvs,
                                                     " KVs; num_tokens is ", num_tokens));
    }
    if (static_cast<int64_t>(head.blocks.size()) != CeilDiv(head.num_kvs, layout.block_size)) {
      return absl::InvalidArgumentError(absl::StrCat("head index ", h, " holds ", head.num_kvs,
                                                     " KVs in ", head.blocks.size(), " blocks"));
    }
    for (const int32_t id : head.blocks) {
      if (id < 0 || id >= layout.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("head index ", h, " has out-of-range block id ", id));
      }
    }
  }
  return absl::OkStatus();
}

// Fills the physical coordinates and freed blocks of `out` from the head's table.
void FillHeadEviction(const HeadBlockTable& head, int32_t block_size, HeadEviction* out,
                      std::vector<std::pair<int32_t, int32_t>>* scratch_moves) {
  const int32_t nb = static_cast<int32_t>(head.blocks.size());
  out->freed_blocks.assign(head.blocks.begin() + (nb - out->blocks_freed), head.blocks.end());
  if (out->evicted_slots.empty()) return;
  scratch_moves->clear();
  CompactionMoves(out->evicted_slots, head.num_kvs, scratch_moves);
  out->moves.resize(scratch_moves->size());
  for (size_t i = 0; i < scratch_moves->size(); ++i) {
    const auto [src, dst] = (*scratch_moves)[i];
    KvMove& m = out->moves[i];
    m.src_slot = src;
    m.dst_slot = dst;
    m.src_block = head.blocks[src / block_size];
    m.src_offset = src % block_size;
    m.dst_block = head.blocks[dst / block_size];
    m.dst_offset = dst % block_size;
  }
}

}  // namespace

void KvSlotReader::ReadBlock(int32_t block, int32_t count, float* scores,
                             int32_t* positions) const {
  for (int32_t i = 0; i < count; ++i) {
    scores[i] = Score(block, i);
    positions[i] = Position(block, i);
  }
}

float FlatKvSlotReader::Score(int32_t block, int32_t offset) const {
  return scores_[static_cast<size_t>(block) * block_size_ + offset];
}

int32_t FlatKvSlotReader::Position(int32_t block, int32_t offset) const {
  return positions_[static_cast<size_t>(block) * block_size_ + offset];
}

void FlatKvSlotReader::ReadBlock(int32_t block, int32_t count, float* scores,
                                 int32_t* positions) const {
  const size_t base = static_cast<size_t>(block) * block_size_;
  std::memcpy(scores, scores_.data() + base, sizeof(float) * count);
  std::memcpy(positions, positions_.data() + base, sizeof(int32_t) * count);
}

void CompactionMoves(std::span<const int32_t> evicted_slots, int32_t num_kvs,
                     std::vector<std::pair<int32_t, int32_t>>* moves) {
  // Holes are consumed from both ends: tail holes (>= num_kvs - m) are skipped as the source walk
  // meets them; every tail survivor fills the lowest hole not yet filled.
  int64_t lo = 0;
  int64_t hi = static_cast<int64_t>(evicted_slots.size()) - 1;
  int32_t src = num_kvs - 1;
  while (lo <= hi) {
    if (evicted_slots[hi] == src) {
      --hi;
    } else {
      KVC_DCHECK(evicted_slots[lo] < src);
      moves->emplace_back(src, evicted_slots[lo]);
      ++lo;
    }
    --src;
  }
}

void EvictionPlanner::ChooseBlockCounts(int32_t block_size, int64_t evict_blocks,
                                        std::vector<int32_t>* k) {
  const size_t num_heads = heads_.size();
  k->assign(num_heads, 0);
  int64_t available = 0;
  for (const HeadInfo& h : heads_) available += h.kmax;
  if (evict_blocks >= available) {
    for (size_t h = 0; h < num_heads; ++h) (*k)[h] = heads_[h].kmax;
    return;
  }
  if (evict_blocks <= 0) return;

  // Blocks head h can free when its `c` cheapest evictable KVs may go: #{j : (j-1)b + r <= c}.
  auto blocks_within = [&](size_t h, int64_t c) -> int64_t {
    const HeadInfo& info = heads_[h];
    if (c < info.r) return 0;
    return std::min<int64_t>(info.kmax, (c - info.r) / block_size + 1);
  };
  std::vector<size_t> active;
  for (size_t h = 0; h < num_heads; ++h) {
    if (heads_[h].kmax > 0) active.push_back(h);
  }

  // Radix select (4 passes of 8 bits) of the threshold key tau: the smallest key such that the
  // (head, j) pairs costing <= tau number at least evict_blocks. A head's count at a threshold is
  // blocks_within(#{its evictable KVs with key <= threshold}), so no per-head sort is needed.
  base_.assign(num_heads, 0);  // #{entries with key < current prefix range}
  std::vector<int64_t>& cum = base_;
  counts_.assign(num_heads, 0);  // entries equal to the final digit (ties at tau), last pass
  uint32_t prefix = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    hist_.assign(num_heads * 256, 0);
    for (const size_t h : active) {
      int64_t* hist = hist_.data() + h * 256;
      for (int64_t i = heads_[h].begin; i < heads_[h].end; ++i) {
        const uint32_t key = entries_[i].key;
        if (pass == 0 || (key >> (shift + 8)) == prefix) ++hist[(key >> shift) & 0xFFu];
      }
    }
    // `cum` starts at base (entries below the prefix range) and grows digit by digit.
    int digit = 0;
    for (; digit < 256; ++digit) {
      int64_t total = 0;
      for (const size_t h : active) {
        cum[h] += hist_[h * 256 + digit];
        total += blocks_within(h, cum[h]);
      }
      if (total >= evict_blocks) break;
    }
    KVC_CHECK_LT(digit, 256) << "radix select found no threshold";
    for (const size_t h : active) {
      const int64_t at_digit = hist_[h * 256 + digit];
      cum[h] -= at_digit;  // back to entries strictly below prefix·digit
      counts_[h] = static_cast<int32_t>(at_digit);
    }
    prefix = (prefix << 8) | static_cast<uint32_t>(digit);
  }

  // All pairs cheaper than tau, then pairs costing exactly tau by (head index, j).
  int64_t taken = 0;
  for (const size_t h : active) {
    (*k)[h] = static_cast<int32_t>(blocks_within(h, base_[h]));
    taken += (*k)[h];
  }
  int64_t remaining = evict_blocks - taken;
  KVC_CHECK_GT(remaining, 0);
  for (const size_t h : active) {
    if (remaining == 0) break;
    const int64_t at_tau = blocks_within(h, base_[h] + counts_[h]) - (*k)[h];
    const int64_t add = std::min(remaining, at_tau);
    (*k)[h] += static_cast<int32_t>(add);
    remaining -= add;
  }
  KVC_CHECK_EQ(remaining, 0);
}

absl::StatusOr<EvictionPlan> EvictionPlanner::Plan(const KvLayout& layout,
                                                   const SequenceBlockTables& tables,
                                                   const KvSlotReader& reader, int64_t num_tokens,
                                                   int64_t evict_blocks,
                                                   const EvictionConstraints& constraints) {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_tokens must be >= 0, got ", num_tokens));
  }
  if (evict_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("evict_blocks must be >= 0, got ", evict_blocks));
  }
  if (constraints.protected_window < 0 || constraints.sink_tokens < 0 ||
      constraints.min_kvs_per_head < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("protected_window, sink_tokens and min_kvs_per_head must be >= 0, got ",
                     constraints.protected_window, ", ", constraints.sink_tokens, ", ",
                     constraints.min_kvs_per_head));
  }
  absl::Status status = ValidateTables(layout, tables, num_tokens);
  if (!status.ok()) return status;

  Gather(layout, tables, reader, num_tokens, constraints, /*gather=*/evict_blocks > 0);
  std::vector<int32_t> k;
  ChooseBlockCounts(layout.block_size, evict_blocks, &k);
  EvictionPlan plan = Emit(layout, tables, k);
  plan.blocks_requested = evict_blocks;
  return plan;
}

void EvictionPlanner::Gather(const KvLayout& layout, const SequenceBlockTables& tables,
                             const KvSlotReader& reader, int64_t num_tokens,
                             const EvictionConstraints& constraints, bool gather) {
  const int32_t b = layout.block_size;
  const int64_t num_heads = layout.heads_per_seq();
  // Evictable positions: [sink_tokens, num_tokens - protected_window).
  const int64_t pos_lo = constraints.sink_tokens;
  const int64_t pos_hi = num_tokens - constraints.protected_window;
  const int64_t keep_blocks = CeilDiv(constraints.min_kvs_per_head, b);

  entries_.clear();
  heads_.assign(num_heads, HeadInfo{});
  block_scores_.resize(b);
  block_positions_.resize(b);

  if (gather && pos_hi > pos_lo) {
    for (int64_t h = 0; h < num_heads; ++h) {
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
        entries_.resize(info.begin);  // nothing this head can give: drop its entries
      } else {
        info.end = static_cast<int64_t>(entries_.size());
      }
    }
  }
}

EvictionPlan EvictionPlanner::Emit(const KvLayout& layout, const SequenceBlockTables& tables,
                                   const std::vector<int32_t>& k) {
  const int32_t b = layout.block_size;
  const int64_t num_heads = layout.heads_per_seq();
  EvictionPlan plan;
  std::vector<std::pair<int32_t, int32_t>> scratch_moves;
  auto before = [](const Entry& x, const Entry& y) {
    if (x.key != y.key) return x.key < y.key;
    if (x.position != y.position) return x.position < y.position;
    return x.slot < y.slot;
  };
  for (int64_t h = 0; h < num_heads; ++h) {
    if (k[h] == 0) continue;
    const HeadInfo& info = heads_[h];
    KVC_CHECK_LE(k[h], info.kmax);
    HeadEviction ev;
    ev.head_index = static_cast<int32_t>(h);
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
    FillHeadEviction(tables.heads[h], b, &ev, &scratch_moves);
    plan.blocks_freed += ev.blocks_freed;
    plan.kvs_evicted += ev.kvs_evicted;
    plan.num_moves += static_cast<int64_t>(ev.moves.size());
    plan.heads.push_back(std::move(ev));
  }
  return plan;
}

absl::StatusOr<EvictionPlan> EvictionPlanner::PlanWithChooser(
    const KvLayout& layout, const SequenceBlockTables& tables, const KvSlotReader& reader,
    int64_t num_tokens, int64_t blocks_requested, const EvictionConstraints& constraints,
    const BlockCountChooser& choose) {
  absl::Status status = ValidateEvictionInput(layout, tables, num_tokens, constraints);
  if (!status.ok()) return status;
  Gather(layout, tables, reader, num_tokens, constraints, /*gather=*/true);
  const size_t num_heads = heads_.size();
  std::vector<int32_t> kmax(num_heads);
  for (size_t h = 0; h < num_heads; ++h) kmax[h] = heads_[h].kmax;
  std::vector<int32_t> k(num_heads, 0);
  choose(kmax, std::span<int32_t>(k));
  for (size_t h = 0; h < num_heads; ++h) k[h] = std::clamp(k[h], 0, kmax[h]);
  EvictionPlan plan = Emit(layout, tables, k);
  plan.blocks_requested = blocks_requested;
  return plan;
}

absl::StatusOr<EvictionPlan> EvictionPlanner::PlanPerHeadBlocks(
    const KvLayout& layout, const SequenceBlockTables& tables, const KvSlotReader& reader,
    int64_t num_tokens, std::span<const int32_t> blocks_to_free_per_head,
    const EvictionConstraints& constraints) {
  if (static_cast<int64_t>(blocks_to_free_per_head.size()) != layout.heads_per_seq()) {
    return absl::InvalidArgumentError(
        absl::StrCat("blocks_to_free_per_head has ", blocks_to_free_per_head.size(),
                     " entries, layout needs ", layout.heads_per_seq()));
  }
  int64_t requested = 0;
  for (size_t h = 0; h < blocks_to_free_per_head.size(); ++h) {
    if (blocks_to_free_per_head[h] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks_to_free_per_head[", h, "] = ", blocks_to_free_per_head[h], " is negative"));
    }
    requested += blocks_to_free_per_head[h];
  }
  return PlanWithChooser(layout, tables, reader, num_tokens, requested, constraints,
                         [&](std::span<const int32_t> kmax, std::span<int32_t> k) {
                           for (size_t h = 0; h < k.size(); ++h)
                             k[h] = std::min(blocks_to_free_per_head[h], kmax[h]);
                         });
}

absl::Status ValidateEvictionInput(const KvLayout& layout, const SequenceBlockTables& tables,
                                   int64_t num_tokens, const EvictionConstraints& constraints) {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_tokens must be >= 0, got ", num_tokens));
  }
  if (constraints.protected_window < 0 || constraints.sink_tokens < 0 ||
      constraints.min_kvs_per_head < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("protected_window, sink_tokens and min_kvs_per_head must be >= 0, got ",
                     constraints.protected_window, ", ", constraints.sink_tokens, ", ",
                     constraints.min_kvs_per_head));
  }
  return ValidateTables(layout, tables, num_tokens);
}

absl::StatusOr<EvictionPlan> PlanPerHeadBlocks(const KvLayout& layout,
                                               const SequenceBlockTables& tables,
                                               const KvSlotReader& reader, int64_t num_tokens,
                                               std::span<const int32_t> blocks_to_free_per_head,
                                               const EvictionConstraints& constraints) {
  EvictionPlanner planner;
  return planner.PlanPerHeadBlocks(layout, tables, reader, num_tokens, blocks_to_free_per_head,
                                   constraints);
}

absl::StatusOr<EvictionPlan> PlanEviction(const KvLayout& layout, const SequenceBlockTables& tables,
                                          const KvSlotReader& reader, int64_t num_tokens,
                                          int64_t evict_blocks,
                                          const EvictionConstraints& constraints) {
  EvictionPlanner planner;
  return planner.Plan(layout, tables, reader, num_tokens, evict_blocks, constraints);
}

absl::StatusOr<EvictionPlan> PlanFromBlockCounts(const KvLayout& layout,
                                                 const SequenceBlockTables& tables,
                                                 std::span<const int32_t> blocks_per_head) {
  absl::Status status = ValidateTables(layout, tables, std::numeric_limits<int32_t>::max());
  if (!status.ok()) return status;
  if (static_cast<int64_t>(blocks_per_head.size()) != layout.heads_per_seq()) {
    return absl::InvalidArgumentError(absl::StrCat("blocks_per_head has ", blocks_per_head.size(),
                                                   " entries, layout needs ",
                                                   layout.heads_per_seq()));
  }
  const int32_t b = layout.block_size;
  EvictionPlan plan;
  std::vector<std::pair<int32_t, int32_t>> unused;
  for (size_t h = 0; h < blocks_per_head.size(); ++h) {
    const int32_t k = blocks_per_head[h];
    const HeadBlockTable& head = tables.heads[h];
    if (k < 0 || k > static_cast<int64_t>(head.blocks.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks_per_head[", h, "] = ", k, " but the head has ", head.blocks.size(), " blocks"));
    }
    if (k == 0) continue;
    HeadEviction ev;
    ev.head_index = static_cast<int32_t>(h);
    ev.num_kvs_before = head.num_kvs;
    ev.blocks_freed = k;
    ev.kvs_evicted = (k - 1) * b + (head.num_kvs - 1) % b + 1;
    FillHeadEviction(head, b, &ev, &unused);
    plan.blocks_freed += k;
    plan.kvs_evicted += ev.kvs_evicted;
    plan.heads.push_back(std::move(ev));
  }
  plan.blocks_requested = plan.blocks_freed;
  return plan;
}

}  // namespace kvc
