// Test helpers for the eviction planner: random cases, a deliberately simple reference planner
// (full sorts, every block cost, one global sort), and a fake executor storage that applies moves.
#ifndef KVC_TESTS_UNIT_KVMANAGER_EVICTION_TEST_UTIL_H_
#define KVC_TESTS_UNIT_KVMANAGER_EVICTION_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"

namespace kvc::testing {

inline bool Evictable(float score, int32_t pos, int64_t num_tokens, const EvictionConstraints& c) {
  return !std::isnan(score) && score != std::numeric_limits<float>::infinity() &&
         pos >= c.sink_tokens && pos < num_tokens - c.protected_window;
}

struct ReferenceResult {
  std::vector<int32_t> blocks;                // k per head index
  std::vector<std::vector<int32_t>> evicted;  // ascending slots per head index
};

// The spec's rule, computed the obvious way: sort every head's KVs fully (unevictable last),
// cost_j = S_((j-1)b + r) for every j, sort all (cost, head, j), keep the cheapest B.
inline ReferenceResult ReferencePlan(const KvLayout& layout, const SequenceBlockTables& tables,
                                     const KvSlotReader& reader, int64_t num_tokens,
                                     int64_t evict_blocks, const EvictionConstraints& c) {
  const int32_t b = layout.block_size;
  struct Kv {
    bool evictable;
    float score;
    int32_t pos;
    int32_t slot;
  };
  struct Candidate {
    float cost;
    int32_t head;
    int32_t j;
  };
  const int32_t num_heads = static_cast<int32_t>(tables.heads.size());
  std::vector<std::vector<Kv>> sorted(num_heads);
  std::vector<Candidate> candidates;
  for (int32_t h = 0; h < num_heads; ++h) {
    const HeadBlockTable& head = tables.heads[h];
    const int32_t n = head.num_kvs;
    if (n == 0) continue;
    for (int32_t slot = 0; slot < n; ++slot) {
      const int32_t block = head.blocks[slot / b];
      const float s = reader.Score(block, slot % b);
      const int32_t p = reader.Position(block, slot % b);
      sorted[h].push_back(Kv{Evictable(s, p, num_tokens, c), s, p, slot});
    }
    std::sort(sorted[h].begin(), sorted[h].end(), [](const Kv& x, const Kv& y) {
      if (x.evictable != y.evictable) return x.evictable;
      if (!x.evictable) return x.slot < y.slot;
      if (x.score < y.score) return true;
      if (y.score < x.score) return false;
      return std::tie(x.pos, x.slot) < std::tie(y.pos, y.slot);
    });
    const int32_t e = static_cast<int32_t>(
        std::count_if(sorted[h].begin(), sorted[h].end(), [](const Kv& k) { return k.evictable; }));
    const int32_t nb = (n + b - 1) / b;
    const int32_t r = (n - 1) % b + 1;
    const int32_t keep_blocks = (c.min_kvs_per_head + b - 1) / b;
    for (int32_t j = 1; j <= nb; ++j) {
      const int32_t idx = (j - 1) * b + r - 1;
      if (idx >= e) break;              // cost would be +inf
      if (nb - j < keep_blocks) break;  // below the per-head minimum
      candidates.push_back(Candidate{sorted[h][idx].score, h, j});
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& x, const Candidate& y) {
    if (x.cost < y.cost) return true;
    if (y.cost < x.cost) return false;
    return std::tie(x.head, x.j) < std::tie(y.head, y.j);
  });
  ReferenceResult result;
  result.blocks.assign(num_heads, 0);
  result.evicted.resize(num_heads);
  const int64_t take = std::min<int64_t>(evict_blocks, static_cast<int64_t>(candidates.size()));
  for (int64_t i = 0; i < take; ++i) ++result.blocks[candidates[i].head];
  for (int32_t h = 0; h < num_heads; ++h) {
    const int32_t k = result.blocks[h];
    if (k == 0) continue;
    const int32_t count = (k - 1) * b + (tables.heads[h].num_kvs - 1) % b + 1;
    for (int32_t i = 0; i < count; ++i) result.evicted[h].push_back(sorted[h][i].slot);
    std::sort(result.evicted[h].begin(), result.evicted[h].end());
  }
  return result;
}

// Host arrays [num_blocks, b] standing in for the executor's score and position storage.
class FakeKvStorage : public KvSlotReader {
 public:
  FakeKvStorage(int64_t num_blocks, int32_t block_size)
      : b_(block_size),
        // Unwritten slots look maximally attractive to evict, so reading one shows up.
        scores_(num_blocks * block_size, -std::numeric_limits<float>::infinity()),
        positions_(num_blocks * block_size, 0) {}

  float Score(int32_t block, int32_t offset) const override {
    return scores_[Index(block, offset)];
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    return positions_[Index(block, offset)];
  }
  void Set(int32_t block, int32_t offset, float score, int32_t pos) {
    scores_[Index(block, offset)] = score;
    positions_[Index(block, offset)] = pos;
  }
  void SetSlot(const HeadBlockTable& head, int32_t slot, float score, int32_t pos) {
    Set(head.blocks[slot / b_], slot % b_, score, pos);
  }
  float SlotScore(const HeadBlockTable& head, int32_t slot) const {
    return Score(head.blocks[slot / b_], slot % b_);
  }
  int32_t SlotPosition(const HeadBlockTable& head, int32_t slot) const {
    return Position(head.blocks[slot / b_], slot % b_);
  }
  // What the executor does with a plan's moves.
  void RunMoves(const std::vector<KvMove>& moves) {
    for (const KvMove& m : moves) {
      Set(m.dst_block, m.dst_offset, Score(m.src_block, m.src_offset),
          Position(m.src_block, m.src_offset));
    }
  }
  // Simulates a freed block being reused: poison it.
  void Poison(int32_t block) {
    for (int32_t o = 0; o < b_; ++o) Set(block, o, -std::numeric_limits<float>::infinity(), -1);
  }
  const std::vector<float>& scores() const { return scores_; }
  const std::vector<int32_t>& positions() const { return positions_; }

 private:
  size_t Index(int32_t block, int32_t offset) const {
    return static_cast<size_t>(block) * b_ + offset;
  }
  int32_t b_;
  std::vector<float> scores_;
  std::vector<int32_t> positions_;
};

// A score generator with many exact ties (including -0/+0 and -inf) and rare NaN / +inf.
inline float RandomScore(std::mt19937* gen, bool ties) {
  const uint32_t u = (*gen)() % 1000;
  if (u < 8) return std::numeric_limits<float>::quiet_NaN();
  if (u < 16) return std::numeric_limits<float>::infinity();
  if (u < 24) return -std::numeric_limits<float>::infinity();
  if (ties) {
    static constexpr float kValues[] = {-1.0f, -0.0f, 0.0f, 0.25f, 0.5f, 1.0f, 2.0f, 1e-30f};
    return kValues[(*gen)() % 8];
  }
  return std::uniform_real_distribution<float>(-2.0f, 5.0f)(*gen);
}

}  // namespace kvc::testing

#endif  // KVC_TESTS_UNIT_KVMANAGER_EVICTION_TEST_UTIL_H_
