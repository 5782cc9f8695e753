// Compression policies (kvmanager/compression_policy.h) and the per-head planning entry points of
// eviction_plan.h: hand-worked allocations, the allocator against a brute-force reference, and
// thousands of random cases checking every policy's plan format, constraints, exact block count
// and policy-specific property, plus plan -> apply -> moves through a KvManager at equal memory.
#include "kvmanager/compression_policy.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_manager.h"
#include "tests/unit/kvmanager/eviction_test_util.h"

namespace kvc {
namespace {

using ::kvc::testing::Evictable;
using ::kvc::testing::FakeKvStorage;
using ::kvc::testing::RandomScore;
using ::kvc::testing::ReferencePlan;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr CompressionPolicyKind kAllKinds[] = {
    CompressionPolicyKind::kNone,      CompressionPolicyKind::kKvCompress,
    CompressionPolicyKind::kSnapKv,    CompressionPolicyKind::kPyramidKv,
    CompressionPolicyKind::kStreaming, CompressionPolicyKind::kRandom};

bool Pinned(float s) { return std::isnan(s) || s == kInf; }

// ---------------------------------------------------------------------------------------------
// Names and options.

TEST(CompressionPolicyNameTest, RoundTripsAndRejectsUnknownNames) {
  const std::vector<std::string> expected = {"none",      "kvcompress", "snapkv",
                                             "pyramidkv", "streaming",  "random"};
  std::set<std::string> seen;
  for (size_t i = 0; i < std::size(kAllKinds); ++i) {
    const std::string name(CompressionPolicyName(kAllKinds[i]));
    EXPECT_EQ(name, expected[i]);
    seen.insert(name);
    auto parsed = ParseCompressionPolicy(name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kAllKinds[i]);
    EXPECT_EQ(MakeCompressionPolicy(kAllKinds[i])->kind(), kAllKinds[i]);
  }
  EXPECT_EQ(seen.size(), std::size(kAllKinds));
  for (const char* bad : {"", "SnapKV", "h2o", "kv-compress", "none "}) {
    auto parsed = ParseCompressionPolicy(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(parsed.status().message()).find("compression policy"), std::string::npos);
    EXPECT_NE(std::string(parsed.status().message()).find("pyramidkv"), std::string::npos);
  }
}

TEST(CompressionPolicyOptionsTest, ValidateNamesTheField) {
  CompressionPolicyOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.pyramid_beta = 0;
  EXPECT_NE(std::string(options.Validate().message()).find("pyramid_beta"), std::string::npos);
  options.pyramid_beta = 20;
  options.streaming_sink_tokens = -1;
  EXPECT_NE(std::string(options.Validate().message()).find("streaming_sink_tokens"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// PyramidKV schedule.

TEST(PyramidLayerWeightsTest, FollowsThePaperSchedule) {
  EXPECT_EQ(PyramidLayerWeights(4, 20), (std::vector<int64_t>{117, 79, 41, 3}));
  EXPECT_EQ(PyramidLayerWeights(1, 20), (std::vector<int64_t>{1}));
  EXPECT_EQ(PyramidLayerWeights(3, 1), (std::vector<int64_t>{2, 2, 2}));  // beta = 1: flat
  for (int32_t layers = 2; layers <= 40; ++layers) {
    for (int32_t beta : {1, 2, 5, 20, 100}) {
      const std::vector<int64_t> w = PyramidLayerWeights(layers, beta);
      ASSERT_EQ(static_cast<int32_t>(w.size()), layers);
      const int64_t sum = std::accumulate(w.begin(), w.end(), int64_t{0});
      // Top layer = average / beta; bottom = 2·average - top; constant step in between.
      EXPECT_EQ(sum, static_cast<int64_t>(beta) * layers * w.back());
      EXPECT_EQ(w.front() * layers, 2 * sum - w.back() * layers);
      for (int32_t l = 1; l < layers; ++l) {
        EXPECT_EQ(w[l - 1] - w[l], w[0] - w[1]);
        EXPECT_GE(w[l - 1], w[l]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The allocator against brute force.

std::vector<int32_t> ReferenceAllocate(const std::vector<int32_t>& held,
                                       const std::vector<int32_t>& max_blocks,
                                       const std::vector<int64_t>& weights, int64_t budget) {
  struct Pair {
    int64_t c;
    int64_t w;
    int32_t h;
  };
  std::vector<Pair> pairs;
  for (size_t h = 0; h < held.size(); ++h) {
    for (int32_t j = 1; j <= max_blocks[h]; ++j) {
      pairs.push_back(Pair{held[h] - j + 1, weights[h], static_cast<int32_t>(h)});
    }
  }
  std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
    // Higher c / w first (exact), then lower head, then higher c (earlier j).
    if (a.c * b.w != b.c * a.w) return a.c * b.w > b.c * a.w;
    if (a.h != b.h) return a.h < b.h;
    return a.c > b.c;
  });
  std::vector<int32_t> k(held.size(), 0);
  for (int64_t i = 0; i < std::min<int64_t>(budget, pairs.size()); ++i) ++k[pairs[i].h];
  return k;
}

TEST(AllocateBlocksProportionalTest, HandWorked) {
  // Uniform: take from the fullest head, ties to the lower index.
  EXPECT_EQ(AllocateBlocksProportional(std::vector<int32_t>{5, 3, 1}, std::vector<int32_t>{5, 3, 1},
                                       std::vector<int64_t>{1, 1, 1}, 4),
            (std::vector<int32_t>{3, 1, 0}));
  // A clamped head's share goes to the others: 4,3,1 (head 0 done) -> 4,2,1 -> 4,1,1 -> 4,0,1.
  EXPECT_EQ(AllocateBlocksProportional(std::vector<int32_t>{5, 3, 1}, std::vector<int32_t>{1, 3, 1},
                                       std::vector<int64_t>{1, 1, 1}, 4),
            (std::vector<int32_t>{1, 3, 0}));
  // Weighted: kept ends proportional to the weights (2:1) when that is exact.
  EXPECT_EQ(AllocateBlocksProportional(std::vector<int32_t>{9, 9}, std::vector<int32_t>{9, 9},
                                       std::vector<int64_t>{2, 1}, 12),
            (std::vector<int32_t>{5, 7}));
  // More than available: everything available.
  EXPECT_EQ(AllocateBlocksProportional(std::vector<int32_t>{4, 2}, std::vector<int32_t>{1, 2},
                                       std::vector<int64_t>{1, 1}, 100),
            (std::vector<int32_t>{1, 2}));
}

TEST(AllocateBlocksProportionalTest, MatchesBruteForceAndWaterFillingBound) {
  std::mt19937 gen(7);
  for (int trial = 0; trial < 5000; ++trial) {
    const int32_t n = 1 + gen() % 9;
    const bool uniform = gen() % 2 == 0;
    std::vector<int32_t> held(n), max_blocks(n);
    std::vector<int64_t> weights(n);
    int64_t total = 0;
    for (int32_t h = 0; h < n; ++h) {
      held[h] = gen() % 13;
      max_blocks[h] = gen() % 3 == 0 ? held[h] : static_cast<int32_t>(gen() % (held[h] + 1));
      weights[h] = uniform ? 1 : 1 + gen() % 60;
      total += max_blocks[h];
    }
    const int64_t budget = gen() % (total + 3);
    const std::vector<int32_t> k = AllocateBlocksProportional(held, max_blocks, weights, budget);
    ASSERT_EQ(k, ReferenceAllocate(held, max_blocks, weights, budget)) << "trial " << trial;
    int64_t sum = 0;
    for (int32_t h = 0; h < n; ++h) {
      ASSERT_GE(k[h], 0);
      ASSERT_LE(k[h], max_blocks[h]);
      sum += k[h];
    }
    ASSERT_EQ(sum, std::min(budget, total));
    for (int32_t h = 0; h < n; ++h) {
      if (k[h] == 0) continue;
      const int64_t kept_h = held[h] - k[h];
      for (int32_t g = 0; g < n; ++g) {
        if (k[g] >= max_blocks[g]) continue;
        const int64_t kept_g = held[g] - k[g];
        ASSERT_LE(kept_g * weights[h], (kept_h + 1) * weights[g]) << "trial " << trial;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Random sequences.

struct RandomCase {
  KvLayout layout;
  SequenceBlockTables tables;
  int64_t num_tokens = 0;
  int64_t evict_blocks = 0;
  EvictionConstraints constraints;
};

// uniform = every head holds all num_tokens positions, no NaN/+inf, no constraints; otherwise
// heads of random lengths, pinned scores, random P, S, m (as in eviction_plan_test).
RandomCase MakeCase(std::mt19937& gen, bool uniform, std::unique_ptr<FakeKvStorage>* storage) {
  static constexpr int32_t kBlockSizes[] = {1, 8, 16, 32, 2, 4};
  RandomCase c;
  c.layout.block_size = kBlockSizes[gen() % (gen() % 4 == 0 ? 6 : 4)];
  c.layout.num_layers = 1 + gen() % 4;
  c.layout.num_kv_heads = 1 + gen() % 3;
  c.layout.head_dim = 8;
  const int32_t b = c.layout.block_size;
  c.num_tokens = gen() % (b * (1 + gen() % 7) + 3);
  if (uniform) c.num_tokens = 1 + gen() % (b * 8 + 20);
  const int32_t num_heads = c.layout.heads_per_seq();
  std::vector<int32_t> n(num_heads);
  int64_t blocks = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    n[h] = uniform || gen() % 3 == 0 ? static_cast<int32_t>(c.num_tokens)
                                     : static_cast<int32_t>(gen() % (c.num_tokens + 1));
    blocks += (n[h] + b - 1) / b;
  }
  c.layout.num_blocks = blocks + gen() % 5 + 1;
  std::vector<int32_t> ids(c.layout.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), gen);
  *storage = std::make_unique<FakeKvStorage>(c.layout.num_blocks, b);
  const bool ties = gen() % 2 == 0;
  size_t next = 0;
  c.tables.heads.resize(num_heads);
  for (int32_t h = 0; h < num_heads; ++h) {
    HeadBlockTable& head = c.tables.heads[h];
    head.num_kvs = n[h];
    for (int32_t i = 0; i < (n[h] + b - 1) / b; ++i) head.blocks.push_back(ids[next++]);
    std::vector<int32_t> pos(c.num_tokens);
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), gen);
    for (int32_t s = 0; s < n[h]; ++s) {
      float score = RandomScore(&gen, ties);
      if (uniform && Pinned(score)) score = 0.5f;
      (*storage)->SetSlot(head, s, score, pos[s]);
    }
  }
  c.evict_blocks = gen() % (blocks + 3);
  if (gen() % 8 == 0) c.evict_blocks = 0;
  if (!uniform) {
    c.constraints.protected_window = gen() % 3 == 0 ? 0 : gen() % (c.num_tokens + 2);
    c.constraints.sink_tokens = gen() % 2 == 0 ? 0 : gen() % 6;
    c.constraints.min_kvs_per_head = gen() % 2 == 0 ? 0 : gen() % (3 * b + 1);
  }
  return c;
}

// kmax per head under `constraints`, from the reference planner with an unlimited budget.
std::vector<int32_t> ReferenceKmax(const RandomCase& c, const KvSlotReader& reader,
                                   const EvictionConstraints& constraints) {
  return ReferencePlan(c.layout, c.tables, reader, c.num_tokens,
                       std::numeric_limits<int64_t>::max(), constraints)
      .blocks;
}

// A head's `count` first evictable KVs in the (score, position, slot) order, or in the
// (position, slot) order when by_position; ascending slots.
std::vector<int32_t> LowestSlots(const HeadBlockTable& head, int32_t count,
                                 const FakeKvStorage& storage, int64_t num_tokens,
                                 const EvictionConstraints& constraints, bool by_position) {
  struct Kv {
    float score;
    int32_t pos;
    int32_t slot;
  };
  std::vector<Kv> kvs;
  for (int32_t s = 0; s < head.num_kvs; ++s) {
    const float score = storage.SlotScore(head, s);
    const int32_t pos = storage.SlotPosition(head, s);
    if (!Evictable(score, pos, num_tokens, constraints)) continue;
    kvs.push_back(Kv{by_position ? 0.0f : score, pos, s});
  }
  std::sort(kvs.begin(), kvs.end(), [](const Kv& x, const Kv& y) {
    if (x.score < y.score) return true;
    if (y.score < x.score) return false;
    return std::tie(x.pos, x.slot) < std::tie(y.pos, y.slot);
  });
  std::vector<int32_t> out;
  for (int32_t i = 0; i < count && i < static_cast<int32_t>(kvs.size()); ++i) {
    out.push_back(kvs[i].slot);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every property a plan of any policy must have: well-formed heads, full blocks afterwards, the
// tail blocks freed, nothing protected/sunk/pinned evicted, valid moves that leave exactly the
// survivors in slots [0, n'), consistent totals.
void CheckPlanFormat(const RandomCase& c, const FakeKvStorage& storage, const EvictionPlan& plan,
                     const EvictionConstraints& constraints) {
  const int32_t b = c.layout.block_size;
  int64_t freed = 0, evicted = 0, moves = 0;
  int32_t previous = -1;
  FakeKvStorage after = storage;
  for (const HeadEviction& ev : plan.heads) {
    ASSERT_GT(ev.head_index, previous);
    previous = ev.head_index;
    ASSERT_LT(ev.head_index, c.layout.heads_per_seq());
    const HeadBlockTable& head = c.tables.heads[ev.head_index];
    const int32_t n = head.num_kvs;
    const int32_t r = (n - 1) % b + 1;
    ASSERT_EQ(ev.num_kvs_before, n);
    ASSERT_GE(ev.blocks_freed, 1);
    ASSERT_EQ(ev.kvs_evicted, (ev.blocks_freed - 1) * b + r);
    const int32_t kept = n - ev.kvs_evicted;
    ASSERT_EQ(kept % b, 0) << "a compressed head must hold only full blocks";
    ASSERT_GE(kept, (constraints.min_kvs_per_head + b - 1) / b * b);
    ASSERT_EQ(static_cast<int32_t>(ev.freed_blocks.size()), ev.blocks_freed);
    ASSERT_TRUE(std::equal(ev.freed_blocks.begin(), ev.freed_blocks.end(),
                           head.blocks.end() - ev.blocks_freed));
    ASSERT_EQ(static_cast<int32_t>(ev.evicted_slots.size()), ev.kvs_evicted);
    ASSERT_TRUE(std::is_sorted(ev.evicted_slots.begin(), ev.evicted_slots.end()));
    const std::set<int32_t> ev_set(ev.evicted_slots.begin(), ev.evicted_slots.end());
    ASSERT_EQ(ev_set.size(), ev.evicted_slots.size());
    std::multiset<int32_t> survivors;
    for (int32_t s = 0; s < n; ++s) {
      const float score = storage.SlotScore(head, s);
      const int32_t pos = storage.SlotPosition(head, s);
      if (ev_set.count(s)) {
        ASSERT_TRUE(Evictable(score, pos, c.num_tokens, constraints))
            << "head " << ev.head_index << " slot " << s << " pos " << pos << " score " << score;
      } else {
        survivors.insert(pos);
      }
    }
    std::set<int32_t> dsts;
    std::vector<KvMove> head_moves;
    for (const KvMove& m : ev.moves) {
      ASSERT_LT(m.dst_slot, kept);
      ASSERT_GE(m.src_slot, kept);
      ASSERT_LT(m.src_slot, n);
      ASSERT_TRUE(ev_set.count(m.dst_slot));
      ASSERT_FALSE(ev_set.count(m.src_slot));
      ASSERT_TRUE(dsts.insert(m.dst_slot).second);
      ASSERT_EQ(m.src_block, head.blocks[m.src_slot / b]);
      ASSERT_EQ(m.src_offset, m.src_slot % b);
      ASSERT_EQ(m.dst_block, head.blocks[m.dst_slot / b]);
      ASSERT_EQ(m.dst_offset, m.dst_slot % b);
      ASSERT_NE(std::find(ev.freed_blocks.begin(), ev.freed_blocks.end(), m.src_block),
                ev.freed_blocks.end());
    }
    after.RunMoves(ev.moves);
    std::multiset<int32_t> compacted;
    for (int32_t s = 0; s < kept; ++s) compacted.insert(after.SlotPosition(head, s));
    ASSERT_EQ(compacted, survivors) << "head " << ev.head_index;
    freed += ev.blocks_freed;
    evicted += ev.kvs_evicted;
    moves += static_cast<int64_t>(ev.moves.size());
  }
  ASSERT_EQ(plan.blocks_freed, freed);
  ASSERT_EQ(plan.kvs_evicted, evicted);
  ASSERT_EQ(plan.num_moves, moves);
  ASSERT_EQ(plan.blocks_requested, c.evict_blocks);
  ASSERT_LE(plan.blocks_freed, c.evict_blocks);
}

std::vector<int32_t> BlocksPerHead(const EvictionPlan& plan, int32_t num_heads) {
  std::vector<int32_t> k(num_heads, 0);
  for (const HeadEviction& ev : plan.heads) k[ev.head_index] = ev.blocks_freed;
  return k;
}

void ExpectSamePlan(const EvictionPlan& a, const EvictionPlan& b) {
  ASSERT_EQ(a.blocks_requested, b.blocks_requested);
  ASSERT_EQ(a.blocks_freed, b.blocks_freed);
  ASSERT_EQ(a.kvs_evicted, b.kvs_evicted);
  ASSERT_EQ(a.num_moves, b.num_moves);
  ASSERT_EQ(a.heads.size(), b.heads.size());
  for (size_t i = 0; i < a.heads.size(); ++i) {
    const HeadEviction& x = a.heads[i];
    const HeadEviction& y = b.heads[i];
    ASSERT_EQ(x.head_index, y.head_index);
    ASSERT_EQ(x.num_kvs_before, y.num_kvs_before);
    ASSERT_EQ(x.blocks_freed, y.blocks_freed);
    ASSERT_EQ(x.kvs_evicted, y.kvs_evicted);
    ASSERT_EQ(x.evicted_slots, y.evicted_slots);
    ASSERT_EQ(x.freed_blocks, y.freed_blocks);
    ASSERT_EQ(x.moves.size(), y.moves.size());
    for (size_t m = 0; m < x.moves.size(); ++m) {
      ASSERT_EQ(std::tie(x.moves[m].src_slot, x.moves[m].dst_slot, x.moves[m].src_block,
                         x.moves[m].src_offset, x.moves[m].dst_block, x.moves[m].dst_offset),
                std::tie(y.moves[m].src_slot, y.moves[m].dst_slot, y.moves[m].src_block,
                         y.moves[m].src_offset, y.moves[m].dst_block, y.moves[m].dst_offset));
    }
  }
}

// The per-head weights a policy allocates with (1 = uniform).
std::vector<int64_t> HeadWeights(const KvLayout& layout, CompressionPolicyKind kind) {
  std::vector<int64_t> w(layout.heads_per_seq(), 1);
  if (kind == CompressionPolicyKind::kPyramidKv) {
    const auto layer = PyramidLayerWeights(layout.num_layers, 20);
    for (int32_t h = 0; h < layout.heads_per_seq(); ++h) w[h] = layer[h / layout.num_kv_heads];
  }
  return w;
}

TEST(CompressionPolicyPropertyTest, EveryPolicyOnRandomCases) {
  std::mt19937 gen(4242);
  std::vector<std::unique_ptr<CompressionPolicy>> policies;  // reused: scratch must not leak
  for (const CompressionPolicyKind kind : kAllKinds)
    policies.push_back(MakeCompressionPolicy(kind));
  EvictionPlanner reference_planner;
  int64_t nonempty = 0, partial = 0, random_nonempty = 0, random_differs = 0;
  int64_t streaming_sinks_bind = 0, pyramid_differs_from_snapkv = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    std::unique_ptr<FakeKvStorage> owner;
    const RandomCase c = MakeCase(gen, /*uniform=*/false, &owner);
    const FakeKvStorage& storage = *owner;
    const int32_t num_heads = c.layout.heads_per_seq();
    const int32_t b = c.layout.block_size;
    const uint64_t seed = gen();
    std::vector<int32_t> held(num_heads);
    for (int32_t h = 0; h < num_heads; ++h) {
      held[h] = static_cast<int32_t>(c.tables.heads[h].blocks.size());
    }
    std::vector<int32_t> snapkv_k;
    for (const auto& policy : policies) {
      const CompressionPolicyKind kind = policy->kind();
      SCOPED_TRACE(::testing::Message()
                   << "trial " << trial << " policy " << CompressionPolicyName(kind) << " b=" << b
                   << " L=" << c.layout.num_layers << " H=" << c.layout.num_kv_heads
                   << " tokens=" << c.num_tokens << " B=" << c.evict_blocks
                   << " P=" << c.constraints.protected_window << " S=" << c.constraints.sink_tokens
                   << " m=" << c.constraints.min_kvs_per_head);
      auto plan = policy->Plan(c.layout, c.tables, storage, c.num_tokens, c.evict_blocks,
                               c.constraints, seed);
      ASSERT_TRUE(plan.ok()) << plan.status();
      EvictionConstraints effective = c.constraints;
      if (kind == CompressionPolicyKind::kStreaming && effective.sink_tokens == 0) {
        effective.sink_tokens = 4;
      }
      ASSERT_NO_FATAL_FAILURE(CheckPlanFormat(c, storage, *plan, effective));
      const std::vector<int32_t> kmax = ReferenceKmax(c, storage, effective);
      const int64_t available = std::accumulate(kmax.begin(), kmax.end(), int64_t{0});
      const std::vector<int32_t> k = BlocksPerHead(*plan, num_heads);
      if (kind == CompressionPolicyKind::kNone) {
        ASSERT_TRUE(plan->empty());
        ASSERT_EQ(plan->blocks_freed, 0);
        continue;
      }
      // Equal memory: exactly B blocks unless the constraints leave fewer.
      ASSERT_EQ(plan->blocks_freed, std::min(c.evict_blocks, available));
      for (int32_t h = 0; h < num_heads; ++h) ASSERT_LE(k[h], kmax[h]);
      switch (kind) {
        case CompressionPolicyKind::kKvCompress: {
          auto expected = reference_planner.Plan(c.layout, c.tables, storage, c.num_tokens,
                                                 c.evict_blocks, c.constraints);
          ASSERT_TRUE(expected.ok());
          ASSERT_NO_FATAL_FAILURE(ExpectSamePlan(*plan, *expected));
          nonempty += !plan->empty();
          partial += plan->blocks_freed > 0 && plan->blocks_freed < available;
          break;
        }
        case CompressionPolicyKind::kSnapKv:
        case CompressionPolicyKind::kPyramidKv:
        case CompressionPolicyKind::kStreaming: {
          const bool streaming = kind == CompressionPolicyKind::kStreaming;
          const std::vector<int64_t> w = HeadWeights(c.layout, kind);
          // Block counts: weighted water-filling over what each head can give.
          ASSERT_EQ(k, ReferenceAllocate(held, kmax, w, c.evict_blocks));
          for (int32_t h = 0; h < num_heads; ++h) {
            if (k[h] == 0) continue;
            for (int32_t g = 0; g < num_heads; ++g) {
              if (k[g] >= kmax[g]) continue;
              ASSERT_LE(static_cast<int64_t>(held[g] - k[g]) * w[h],
                        static_cast<int64_t>(held[h] - k[h] + 1) * w[g])
                  << "head " << g << " could have given instead of head " << h;
            }
          }
          // Within a head: its lowest-scored (or oldest) (k-1)·b + r evictable KVs.
          for (const HeadEviction& ev : plan->heads) {
            const HeadBlockTable& head = c.tables.heads[ev.head_index];
            ASSERT_EQ(ev.evicted_slots, LowestSlots(head, ev.kvs_evicted, storage, c.num_tokens,
                                                    effective, streaming));
            if (streaming) {
              // Exactly the oldest non-sink positions: every evictable survivor is younger.
              int32_t newest_evicted = -1;
              for (int32_t s : ev.evicted_slots) {
                newest_evicted = std::max(newest_evicted, storage.SlotPosition(head, s));
                ASSERT_GE(storage.SlotPosition(head, s), effective.sink_tokens);
              }
              const std::set<int32_t> ev_set(ev.evicted_slots.begin(), ev.evicted_slots.end());
              for (int32_t s = 0; s < head.num_kvs; ++s) {
                if (ev_set.count(s) ||
                    !Evictable(storage.SlotScore(head, s), storage.SlotPosition(head, s),
                               c.num_tokens, effective)) {
                  continue;
                }
                ASSERT_GT(storage.SlotPosition(head, s), newest_evicted);
              }
            }
          }
          if (kind == CompressionPolicyKind::kSnapKv) snapkv_k = k;
          if (kind == CompressionPolicyKind::kPyramidKv) {
            pyramid_differs_from_snapkv += k != snapkv_k;
          }
          if (streaming && c.constraints.sink_tokens == 0) {
            const std::vector<int32_t> no_sinks = ReferenceKmax(c, storage, c.constraints);
            streaming_sinks_bind +=
                available < std::accumulate(no_sinks.begin(), no_sinks.end(), int64_t{0});
          }
          break;
        }
        case CompressionPolicyKind::kRandom: {
          // The global rule on hashed scores (pins kept), deterministic per seed.
          FakeKvStorage hashed = storage;
          for (int32_t h = 0; h < num_heads; ++h) {
            const HeadBlockTable& head = c.tables.heads[h];
            for (int32_t s = 0; s < head.num_kvs; ++s) {
              const float score = storage.SlotScore(head, s);
              const int32_t pos = storage.SlotPosition(head, s);
              if (!Pinned(score)) hashed.SetSlot(head, s, RandomEvictionScore(seed, pos, h), pos);
            }
          }
          const auto ref = ReferencePlan(c.layout, c.tables, hashed, c.num_tokens, c.evict_blocks,
                                         c.constraints);
          ASSERT_EQ(k, ref.blocks);
          for (const HeadEviction& ev : plan->heads) {
            ASSERT_EQ(ev.evicted_slots, ref.evicted[ev.head_index]);
          }
          auto again = policy->Plan(c.layout, c.tables, storage, c.num_tokens, c.evict_blocks,
                                    c.constraints, seed);
          ASSERT_TRUE(again.ok());
          ASSERT_NO_FATAL_FAILURE(ExpectSamePlan(*plan, *again));
          auto other = policy->Plan(c.layout, c.tables, storage, c.num_tokens, c.evict_blocks,
                                    c.constraints, seed + 1);
          ASSERT_TRUE(other.ok());
          ASSERT_EQ(other->blocks_freed, plan->blocks_freed);
          if (!plan->empty()) {
            ++random_nonempty;
            bool differs = other->heads.size() != plan->heads.size();
            for (size_t i = 0; !differs && i < plan->heads.size(); ++i) {
              differs = other->heads[i].head_index != plan->heads[i].head_index ||
                        other->heads[i].evicted_slots != plan->heads[i].evicted_slots;
            }
            random_differs += differs;
          }
          break;
        }
        case CompressionPolicyKind::kNone:
          break;
      }
    }
  }
  // The generator exercised the interesting regimes, and seeds matter.
  EXPECT_GT(nonempty, 1200);
  EXPECT_GT(partial, 300);
  EXPECT_GT(pyramid_differs_from_snapkv, 300);
  EXPECT_GT(streaming_sinks_bind, 50);
  EXPECT_GT(random_differs, random_nonempty * 6 / 10) << random_differs << " / " << random_nonempty;
}

// All heads hold the whole sequence and nothing binds: the policies' shapes in their pure form.
TEST(CompressionPolicyPropertyTest, UnconstrainedShapes) {
  std::mt19937 gen(77);
  CompressionPolicyOptions no_sinks;
  no_sinks.streaming_sink_tokens = 0;
  auto snapkv = MakeCompressionPolicy(CompressionPolicyKind::kSnapKv);
  auto pyramid = MakeCompressionPolicy(CompressionPolicyKind::kPyramidKv);
  auto streaming = MakeCompressionPolicy(CompressionPolicyKind::kStreaming, no_sinks);
  int64_t checked_pyramid = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::unique_ptr<FakeKvStorage> owner;
    const RandomCase c = MakeCase(gen, /*uniform=*/true, &owner);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " b=" << c.layout.block_size << " L="
                                      << c.layout.num_layers << " H=" << c.layout.num_kv_heads
                                      << " tokens=" << c.num_tokens << " B=" << c.evict_blocks);
    const int32_t num_heads = c.layout.heads_per_seq();
    const int32_t b = c.layout.block_size;
    const int32_t nb = static_cast<int32_t>((c.num_tokens + b - 1) / b);
    const int64_t expected_freed = std::min<int64_t>(c.evict_blocks, int64_t{nb} * num_heads);
    for (CompressionPolicy* policy : {snapkv.get(), streaming.get()}) {
      auto plan = policy->Plan(c.layout, c.tables, *owner, c.num_tokens, c.evict_blocks, {}, 1);
      ASSERT_TRUE(plan.ok());
      ASSERT_NO_FATAL_FAILURE(CheckPlanFormat(c, *owner, *plan, {}));
      ASSERT_EQ(plan->blocks_freed, expected_freed);
      const std::vector<int32_t> k = BlocksPerHead(*plan, num_heads);
      const auto [lo, hi] = std::minmax_element(k.begin(), k.end());
      ASSERT_LE(*hi - *lo, 1) << "uniform per head";
      if (policy == streaming.get()) {
        // No sinks, no window: each head drops exactly positions [0, count).
        for (const HeadEviction& ev : plan->heads) {
          std::vector<int32_t> positions;
          for (int32_t s : ev.evicted_slots) {
            positions.push_back(owner->SlotPosition(c.tables.heads[ev.head_index], s));
          }
          std::sort(positions.begin(), positions.end());
          std::vector<int32_t> oldest(ev.kvs_evicted);
          std::iota(oldest.begin(), oldest.end(), 0);
          ASSERT_EQ(positions, oldest);
        }
      }
    }
    auto plan = pyramid->Plan(c.layout, c.tables, *owner, c.num_tokens, c.evict_blocks, {}, 1);
    ASSERT_TRUE(plan.ok());
    ASSERT_NO_FATAL_FAILURE(CheckPlanFormat(c, *owner, *plan, {}));
    ASSERT_EQ(plan->blocks_freed, expected_freed);
    const std::vector<int32_t> k = BlocksPerHead(*plan, num_heads);
    const int32_t heads = c.layout.num_kv_heads;
    std::vector<int64_t> layer_kept(c.layout.num_layers, 0);
    for (int32_t x = 0; x < num_heads; ++x) {
      layer_kept[x / heads] += nb - k[x];
      for (int32_t y = 0; y < num_heads; ++y) {
        if (x / heads < y / heads) {
          ASSERT_GE(nb - k[x], nb - k[y]) << "a lower layer's head keeps less than a higher one's";
        } else if (x / heads == y / heads) {
          ASSERT_LE(std::abs(k[x] - k[y]), 1) << "uniform within a layer";
        }
      }
    }
    for (int32_t l = 1; l < c.layout.num_layers; ++l) {
      ASSERT_GE(layer_kept[l - 1], layer_kept[l]) << "per-layer blocks grow with depth";
    }
    checked_pyramid += c.layout.num_layers > 1 && plan->blocks_freed > 0 &&
                       plan->blocks_freed < int64_t{nb} * num_heads;
  }
  EXPECT_GT(checked_pyramid, 500);
}

// ---------------------------------------------------------------------------------------------
// Hand-worked plans.

// One sequence whose every head holds positions 0..n-1 in order, score = f(head, position).
struct Built {
  KvLayout layout;
  SequenceBlockTables tables;
  std::unique_ptr<FakeKvStorage> storage;
};
Built Build(int32_t layers, int32_t heads, int32_t b, const std::vector<int32_t>& n,
            float (*score)(int32_t head, int32_t pos)) {
  Built out;
  out.layout.num_layers = layers;
  out.layout.num_kv_heads = heads;
  out.layout.head_dim = 8;
  out.layout.block_size = b;
  int64_t blocks = 0;
  for (int32_t x : n) blocks += (x + b - 1) / b;
  out.layout.num_blocks = blocks;
  out.storage = std::make_unique<FakeKvStorage>(blocks, b);
  out.tables.heads.resize(n.size());
  int32_t next = 0;
  for (size_t h = 0; h < n.size(); ++h) {
    HeadBlockTable& head = out.tables.heads[h];
    head.num_kvs = n[h];
    for (int32_t i = 0; i < (n[h] + b - 1) / b; ++i) head.blocks.push_back(next++);
    for (int32_t s = 0; s < n[h]; ++s) {
      out.storage->SetSlot(head, s, score(static_cast<int32_t>(h), s), s);
    }
  }
  return out;
}

TEST(CompressionPolicyTest, PyramidKeepsThePaperShares) {
  // L=4, H=1, 240 blocks per head, keep 240 of 960: shares 117:79:41:3 exactly.
  Built s = Build(4, 1, 2, {480, 480, 480, 480}, [](int32_t h, int32_t p) {
    return static_cast<float>((p * 7919 + h * 31) % 1000);
  });
  auto policy = MakeCompressionPolicy(CompressionPolicyKind::kPyramidKv);
  auto plan = policy->Plan(s.layout, s.tables, *s.storage, 480, 720, {}, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(BlocksPerHead(*plan, 4), (std::vector<int32_t>{240 - 117, 240 - 79, 240 - 41, 237}));
  // Two kv heads per layer: each head of a layer keeps the layer's per-head share.
  Built t = Build(4, 2, 2, std::vector<int32_t>(8, 480), [](int32_t h, int32_t p) {
    return static_cast<float>((p * 7919 + h * 31) % 1000);
  });
  plan = policy->Plan(t.layout, t.tables, *t.storage, 480, 1440, {}, 0);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(BlocksPerHead(*plan, 8),
            (std::vector<int32_t>{123, 123, 161, 161, 199, 199, 237, 237}));
  // A bottom layer that cannot use its share (it holds less) leaves it to the others, so the
  // total freed stays B: L=2 (weights 39:1), 10 KVs each, b=1, B=5 -> all from the top layer.
  Built u = Build(2, 1, 1, {10, 10}, [](int32_t, int32_t p) { return static_cast<float>(p); });
  plan = policy->Plan(u.layout, u.tables, *u.storage, 10, 5, {}, 0);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(BlocksPerHead(*plan, 2), (std::vector<int32_t>{0, 5}));
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{0, 1, 2, 3, 4}));  // lowest scores
}

TEST(CompressionPolicyTest, SnapKvEqualizesHeadsAndEvictsLowestScores) {
  // L=1, H=3, b=2: heads of 10, 6, 2 KVs (5, 3, 1 blocks). Score = (pos * 3) % 10 per head.
  Built s = Build(1, 3, 2, {10, 6, 2},
                  [](int32_t, int32_t p) { return static_cast<float>((p * 3) % 10); });
  auto policy = MakeCompressionPolicy(CompressionPolicyKind::kSnapKv);
  auto plan = policy->Plan(s.layout, s.tables, *s.storage, 10, 4, {}, 0);
  ASSERT_TRUE(plan.ok());
  // 5,3,1 -> take from the fullest: 4,3,1 -> 3,3,1 -> (tie, lower index) 2,3,1 -> 2,2,1.
  EXPECT_EQ(BlocksPerHead(*plan, 3), (std::vector<int32_t>{3, 1, 0}));
  // Head 0 evicts 6 KVs: scores by slot 0,3,6,9,2,5,8,1,4,7 -> lowest six: slots 0,4,7,1,8,5.
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{0, 1, 4, 5, 7, 8}));
  // Head 1 evicts 2 KVs: scores 0,3,6,9,2,5 -> slots 0 and 4.
  EXPECT_EQ(plan->heads[1].evicted_slots, (std::vector<int32_t>{0, 4}));
  // The global rule would instead take the cheapest blocks wherever they are.
  auto global = MakeCompressionPolicy(CompressionPolicyKind::kKvCompress)
                    ->Plan(s.layout, s.tables, *s.storage, 10, 4, {}, 0);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ(global->blocks_freed, 4);
  EXPECT_NE(BlocksPerHead(*global, 3), BlocksPerHead(*plan, 3));
}

TEST(CompressionPolicyTest, StreamingKeepsSinksAndRecentTokens) {
  // L=1, H=2, b=4, 20 tokens; scores favour evicting the newest, which streaming ignores.
  Built s = Build(1, 2, 4, {20, 20}, [](int32_t, int32_t p) { return -static_cast<float>(p); });
  auto policy = MakeCompressionPolicy(CompressionPolicyKind::kStreaming);
  auto plan = policy->Plan(s.layout, s.tables, *s.storage, 20, 4, {}, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 2u);
  for (const HeadEviction& ev : plan->heads) {
    // Default 4 sinks: positions 4..11 go, 0..3 and 12..19 stay.
    EXPECT_EQ(ev.evicted_slots, (std::vector<int32_t>{4, 5, 6, 7, 8, 9, 10, 11}));
  }
  // Explicit sinks win over the default; the protected window still binds.
  plan = policy->Plan(s.layout, s.tables, *s.storage, 20, 8,
                      {.protected_window = 6, .sink_tokens = 2}, 0);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->blocks_freed, 6);  // 12 evictable positions (2..13) per head: 3 blocks each
  for (const HeadEviction& ev : plan->heads) {
    std::vector<int32_t> expected(12);
    std::iota(expected.begin(), expected.end(), 2);
    EXPECT_EQ(ev.evicted_slots, expected);
  }
}

TEST(CompressionPolicyTest, NoneNeverEvictsAndEveryPolicyValidates) {
  Built s = Build(2, 2, 4, {9, 9, 9, 9}, [](int32_t, int32_t p) { return 1.0f * p; });
  for (const CompressionPolicyKind kind : kAllKinds) {
    SCOPED_TRACE(std::string(CompressionPolicyName(kind)));
    auto policy = MakeCompressionPolicy(kind);
    auto plan = policy->Plan(s.layout, s.tables, *s.storage, 9, 5, {}, 3);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->blocks_requested, 5);
    EXPECT_EQ(plan->blocks_freed, kind == CompressionPolicyKind::kNone ? 0 : 5);
    plan = policy->Plan(s.layout, s.tables, *s.storage, 9, 0, {}, 3);
    ASSERT_TRUE(plan.ok());
    EXPECT_TRUE(plan->empty());
    EXPECT_EQ(policy->Plan(s.layout, s.tables, *s.storage, 9, -1, {}, 3).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(policy->Plan(s.layout, s.tables, *s.storage, -1, 1, {}, 3).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        policy->Plan(s.layout, s.tables, *s.storage, 9, 1, {.sink_tokens = -1}, 3).status().code(),
        absl::StatusCode::kInvalidArgument);
    SequenceBlockTables bad = s.tables;
    bad.heads.pop_back();
    EXPECT_EQ(policy->Plan(s.layout, bad, *s.storage, 9, 1, {}, 3).status().code(),
              absl::StatusCode::kInvalidArgument);
    bad = s.tables;
    bad.heads[1].num_kvs = 13;  // 4 blocks' worth in 3 blocks
    EXPECT_EQ(policy->Plan(s.layout, bad, *s.storage, 20, 1, {}, 3).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

// ---------------------------------------------------------------------------------------------
// The per-head entry point of eviction_plan.h.

TEST(PlanPerHeadBlocksTest, ClampsEachHeadAndEvictsItsLowestKvs) {
  std::mt19937 gen(11);
  EvictionPlanner planner;
  int64_t clamped = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::unique_ptr<FakeKvStorage> owner;
    RandomCase c = MakeCase(gen, /*uniform=*/false, &owner);
    const int32_t num_heads = c.layout.heads_per_seq();
    std::vector<int32_t> targets(num_heads);
    int64_t requested = 0;
    for (int32_t h = 0; h < num_heads; ++h) {
      targets[h] = gen() % (c.tables.heads[h].blocks.size() + 2);
      requested += targets[h];
    }
    c.evict_blocks = requested;
    auto plan =
        planner.PlanPerHeadBlocks(c.layout, c.tables, *owner, c.num_tokens, targets, c.constraints);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_NO_FATAL_FAILURE(CheckPlanFormat(c, *owner, *plan, c.constraints));
    const std::vector<int32_t> kmax = ReferenceKmax(c, *owner, c.constraints);
    const std::vector<int32_t> k = BlocksPerHead(*plan, num_heads);
    for (int32_t h = 0; h < num_heads; ++h) {
      ASSERT_EQ(k[h], std::min(targets[h], kmax[h])) << "trial " << trial << " head " << h;
      clamped += targets[h] > kmax[h];
    }
    for (const HeadEviction& ev : plan->heads) {
      ASSERT_EQ(ev.evicted_slots, LowestSlots(c.tables.heads[ev.head_index], ev.kvs_evicted, *owner,
                                              c.num_tokens, c.constraints, false));
    }
    // The one-shot form agrees.
    auto once = PlanPerHeadBlocks(c.layout, c.tables, *owner, c.num_tokens, targets, c.constraints);
    ASSERT_TRUE(once.ok());
    ASSERT_NO_FATAL_FAILURE(ExpectSamePlan(*plan, *once));
  }
  EXPECT_GT(clamped, 500);
  // Bad targets.
  Built s = Build(1, 2, 4, {9, 9}, [](int32_t, int32_t p) { return 1.0f * p; });
  EXPECT_EQ(PlanPerHeadBlocks(s.layout, s.tables, *s.storage, 9, std::vector<int32_t>{1}, {})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanPerHeadBlocks(s.layout, s.tables, *s.storage, 9, std::vector<int32_t>{1, -1}, {})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Through a KvManager: same budget, plan with each policy, apply, run the moves, repeat.

TEST(CompressionPolicyKvManagerTest, EveryPolicyMeetsTheSameBudgetThroughApplyEviction) {
  for (const CompressionPolicyKind kind : kAllKinds) {
    SCOPED_TRACE(std::string(CompressionPolicyName(kind)));
    std::mt19937 gen(5);
    KvManagerOptions options;
    options.layout = KvLayout{3, 2, 8, 4, 600};
    KvManager kv(options);
    FakeKvStorage storage(600, 4);
    auto policy = MakeCompressionPolicy(kind);
    CompressionSettings settings;
    settings.mode = BudgetMode::kMaxCacheTokens;
    settings.max_cache_tokens = 24;
    settings.constraints = {.protected_window = 5, .sink_tokens = 2, .min_kvs_per_head = 4};
    ASSERT_TRUE(kv.AddSequence(7).ok());
    std::vector<std::multiset<int32_t>> expected(6);  // each head's positions
    int64_t applied = 0;
    for (int round = 0; round < 12; ++round) {
      const int32_t n = round == 0 ? 60 : 1 + gen() % 9;
      ASSERT_TRUE(kv.Append(7, n).ok());
      const SequenceBlockTables* t = kv.Tables(7);
      const int64_t tokens = kv.Usage(7)->tokens;
      for (int32_t h = 0; h < 6; ++h) {
        const HeadBlockTable& head = t->heads[h];
        for (int32_t i = 0; i < n; ++i) {
          const int32_t pos = static_cast<int32_t>(tokens - n + i);
          storage.SetSlot(head, head.num_kvs - n + i,
                          std::uniform_real_distribution<float>(0, 1)(gen), pos);
          expected[h].insert(pos);
        }
      }
      auto evict = kv.EvictBlocksForBudget(7, settings);
      ASSERT_TRUE(evict.ok());
      auto plan = PlanSequenceEviction(kv, 7, storage, *evict, settings.constraints, 99, *policy);
      ASSERT_TRUE(plan.ok()) << plan.status();
      for (const HeadEviction& ev : plan->heads) {
        for (int32_t s : ev.evicted_slots) {
          const int32_t pos = storage.SlotPosition(t->heads[ev.head_index], s);
          ASSERT_GE(pos, settings.constraints.sink_tokens);
          ASSERT_LT(pos, tokens - settings.constraints.protected_window);
          const auto it = expected[ev.head_index].find(pos);
          ASSERT_NE(it, expected[ev.head_index].end()) << "position " << pos << " evicted twice";
          expected[ev.head_index].erase(it);
        }
      }
      std::vector<KvMove> moves;
      ASSERT_TRUE(kv.ApplyEviction(7, *plan, CompressionTrigger::kContinual, &moves).ok());
      storage.RunMoves(moves);
      for (const HeadEviction& ev : plan->heads) {
        for (int32_t block : ev.freed_blocks) storage.Poison(block);
      }
      applied += !plan->empty();
      ASSERT_TRUE(kv.CheckInvariants().ok()) << kv.CheckInvariants();
      for (int32_t h = 0; h < 6; ++h) {
        std::multiset<int32_t> held;
        for (int32_t s = 0; s < t->heads[h].num_kvs; ++s) {
          held.insert(storage.SlotPosition(t->heads[h], s));
        }
        ASSERT_EQ(held, expected[h]) << "round " << round << " head " << h;
      }
      // Equal memory: every evicting policy lands exactly on the budget (nothing binds here).
      auto left = kv.EvictBlocksForBudget(7, settings);
      ASSERT_TRUE(left.ok());
      if (kind == CompressionPolicyKind::kNone) {
        EXPECT_EQ(*left, *evict);
      } else {
        EXPECT_EQ(*left, 0) << "round " << round;
        EXPECT_LE(kv.Usage(7)->blocks, 6 * 6);  // ceil(24 / 4) blocks per head on average
      }
    }
    EXPECT_EQ(kv.Usage(7)->compressions, kind == CompressionPolicyKind::kNone ? 0 : applied);
    if (kind != CompressionPolicyKind::kNone) {
      EXPECT_GT(applied, 5);
    }
    EXPECT_EQ(PlanSequenceEviction(kv, 8, storage, 1, {}, 0, *policy).status().code(),
              absl::StatusCode::kNotFound);
  }
}

}  // namespace
}  // namespace kvc
