#include "kvmanager/eviction_plan.h"

#include <algorithm>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/kvmanager/eviction_test_util.h"

namespace kvc {
namespace {

using ::kvc::testing::Evictable;
using ::kvc::testing::FakeKvStorage;
using ::kvc::testing::RandomScore;
using ::kvc::testing::ReferencePlan;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<std::pair<int32_t, int32_t>> Moves(std::vector<int32_t> evicted, int32_t n) {
  std::vector<std::pair<int32_t, int32_t>> moves;
  CompactionMoves(evicted, n, &moves);
  return moves;
}

TEST(CompactionMovesTest, TailSurvivorsFillLowestHoles) {
  using M = std::vector<std::pair<int32_t, int32_t>>;
  EXPECT_EQ(Moves({1, 4}, 5), (M{{3, 1}}));
  EXPECT_EQ(Moves({0, 1, 2}, 6), (M{{5, 0}, {4, 1}, {3, 2}}));
  EXPECT_EQ(Moves({3, 4, 5}, 6), M{});               // only tail holes: nothing moves
  EXPECT_EQ(Moves({0, 5}, 8), (M{{7, 0}, {6, 5}}));  // n' = 6: both tail KVs survive
  EXPECT_EQ(Moves({}, 4), M{});
  EXPECT_EQ(Moves({0, 1, 2, 3}, 4), M{});
}

TEST(CompactionMovesTest, RandomMovesAreAPermutationIntoHoles) {
  std::mt19937 gen(3);
  for (int trial = 0; trial < 3000; ++trial) {
    const int32_t n = 1 + gen() % 70;
    std::vector<int32_t> slots(n);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), gen);
    const int32_t m = gen() % (n + 1);
    std::vector<int32_t> evicted(slots.begin(), slots.begin() + m);
    std::sort(evicted.begin(), evicted.end());
    const auto moves = Moves(evicted, n);
    const int32_t kept = n - m;
    const std::set<int32_t> holes(evicted.begin(), evicted.end());
    std::set<int32_t> srcs, dsts;
    for (auto [src, dst] : moves) {
      ASSERT_LT(dst, kept);
      ASSERT_GE(src, kept);
      ASSERT_LT(src, n);
      ASSERT_TRUE(holes.count(dst));
      ASSERT_FALSE(holes.count(src));
      ASSERT_TRUE(srcs.insert(src).second);
      ASSERT_TRUE(dsts.insert(dst).second);
    }
    // Every hole below `kept` is filled and every survivor at or above it moved.
    int32_t low_holes = 0;
    for (int32_t e : evicted) low_holes += e < kept;
    ASSERT_EQ(static_cast<int32_t>(moves.size()), low_holes);
  }
}

// One sequence: L=1, H=2, b=4. Head 0: 6 KVs (r=2), head 1: 4 KVs (r=4).
class SmallPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_.num_layers = 1;
    layout_.num_kv_heads = 2;
    layout_.head_dim = 8;
    layout_.block_size = 4;
    layout_.num_blocks = 8;
    tables_.heads.resize(2);
    tables_.heads[0] = HeadBlockTable{{5, 2}, 6};
    tables_.heads[1] = HeadBlockTable{{7}, 4};
    // Head 0 slots 0..5 (positions 0..5), scores:
    const float s0[] = {9, 1, 5, 2, 7, 3};
    for (int i = 0; i < 6; ++i) storage_.SetSlot(tables_.heads[0], i, s0[i], i);
    // Head 1 holds positions {0, 2, 4, 5} in shuffled slots.
    const float s1[] = {4, 0.5f, 6, 8};
    const int32_t p1[] = {4, 0, 5, 2};
    for (int i = 0; i < 4; ++i) storage_.SetSlot(tables_.heads[1], i, s1[i], p1[i]);
  }
  KvLayout layout_;
  SequenceBlockTables tables_;
  FakeKvStorage storage_{8, 4};
};

TEST_F(SmallPlanTest, CheapestBlocksAcrossHeads) {
  // Head 0 sorted: 1(s1) 2(s3) 3(s5) 5(s2) 7(s4) 9(s0); r=2: cost_1 = S_2 = 2, cost_2 = S_6 = 9.
  // Head 1 sorted: 0.5 4 6 8; r=4: cost_1 = 8.
  auto plan = PlanEviction(layout_, tables_, storage_, 6, 1, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->heads.size(), 1u);
  const HeadEviction& ev = plan->heads[0];
  EXPECT_EQ(ev.head_index, 0);
  EXPECT_EQ(ev.blocks_freed, 1);
  EXPECT_EQ(ev.kvs_evicted, 2);
  EXPECT_EQ(ev.evicted_slots, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(ev.freed_blocks, std::vector<int32_t>{2});
  // n' = 4: survivors at slots 4, 5 fill holes 1, 3 (tail walk: 5 -> 1, 4 -> 3).
  ASSERT_EQ(ev.moves.size(), 2u);
  EXPECT_EQ(ev.moves[0].src_slot, 5);
  EXPECT_EQ(ev.moves[0].dst_slot, 1);
  EXPECT_EQ(ev.moves[0].src_block, 2);
  EXPECT_EQ(ev.moves[0].src_offset, 1);
  EXPECT_EQ(ev.moves[0].dst_block, 5);
  EXPECT_EQ(ev.moves[0].dst_offset, 1);
  EXPECT_EQ(ev.moves[1].src_slot, 4);
  EXPECT_EQ(ev.moves[1].dst_slot, 3);
  EXPECT_EQ(plan->blocks_freed, 1);
  EXPECT_EQ(plan->kvs_evicted, 2);
  EXPECT_EQ(plan->num_moves, 2);

  // B=2: the next cheapest is head 1 j=1 (8) before head 0 j=2 (9).
  plan = PlanEviction(layout_, tables_, storage_, 6, 2, {});
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 2u);
  EXPECT_EQ(plan->heads[0].blocks_freed, 1);
  EXPECT_EQ(plan->heads[1].head_index, 1);
  EXPECT_EQ(plan->heads[1].blocks_freed, 1);
  EXPECT_EQ(plan->heads[1].kvs_evicted, 4);
  EXPECT_EQ(plan->heads[1].evicted_slots, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(plan->heads[1].freed_blocks, std::vector<int32_t>{7});
  EXPECT_TRUE(plan->heads[1].moves.empty());

  // B=3 takes everything; B=10 cannot do more.
  for (int64_t budget : {3, 10}) {
    plan = PlanEviction(layout_, tables_, storage_, 6, budget, {});
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(plan->blocks_requested, budget);
    EXPECT_EQ(plan->blocks_freed, 3);
    EXPECT_EQ(plan->kvs_evicted, 10);
    EXPECT_EQ(plan->heads[0].freed_blocks, (std::vector<int32_t>{5, 2}));
    EXPECT_TRUE(plan->heads[0].moves.empty());
  }
  plan = PlanEviction(layout_, tables_, storage_, 6, 0, {});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->empty());
}

TEST_F(SmallPlanTest, ProtectedWindowSinksAndMinimum) {
  // P=2 protects positions 4, 5 (t = 5): head 0 slots 4, 5 and head 1 slots 0, 2 are kept.
  // Head 0 evictable sorted: 1(s1) 2(s3) 5(s2) 9(s0) -> cost_1 = 2, cost_2 needs 6 KVs: no.
  // Head 1 evictable: 0.5(s1) 8(s3) -> r=4 needs 4: no.
  auto plan = PlanEviction(layout_, tables_, storage_, 6, 5, {2, 0, 0});
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 1u);
  EXPECT_EQ(plan->heads[0].head_index, 0);
  EXPECT_EQ(plan->heads[0].blocks_freed, 1);
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{1, 3}));
  // Sinks: S=2 protects positions 0, 1 -> head 0 slot 1 (score 1) is kept; the two cheapest
  // evictable are slots 3 (2) and 5 (3).
  plan = PlanEviction(layout_, tables_, storage_, 6, 1, {0, 2, 0});
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 1u);
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{3, 5}));
  // min_kvs_per_head = 1 rounds up to one block of 4: head 1 (one block) cannot be compressed,
  // head 0 can free one block only.
  plan = PlanEviction(layout_, tables_, storage_, 6, 5, {0, 0, 1});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->blocks_freed, 1);
  EXPECT_EQ(plan->heads[0].kvs_evicted, 2);
  // min_kvs_per_head = 5 -> 8 KVs: nothing can go.
  plan = PlanEviction(layout_, tables_, storage_, 6, 5, {0, 0, 5});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->empty());
  // A protected window covering everything.
  plan = PlanEviction(layout_, tables_, storage_, 6, 5, {6, 0, 0});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->empty());
}

TEST_F(SmallPlanTest, NaNAndInfiniteScoresAreNeverEvicted) {
  storage_.SetSlot(tables_.heads[0], 1, kNaN, 1);
  storage_.SetSlot(tables_.heads[0], 3, kInf, 3);
  storage_.SetSlot(tables_.heads[1], 1, -kInf, 0);
  // Head 0 evictable: 3(s5) 5(s2) 7(s4) 9(s0): cost_1 = 5, cost_2 needs 6. Head 1: -inf 4 6 8:
  // cost_1 = 8. B=2 -> head 0 j=1 (5) and head 1 j=1 (8).
  auto plan = PlanEviction(layout_, tables_, storage_, 6, 2, {});
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 2u);
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(plan->heads[1].evicted_slots, (std::vector<int32_t>{0, 1, 2, 3}));
}

TEST_F(SmallPlanTest, TiesBreakByHeadThenPositionThenSlot) {
  // All scores equal: (cost, head, j) order takes head 0 first; inside a head the lowest
  // positions go first.
  for (int i = 0; i < 6; ++i) storage_.SetSlot(tables_.heads[0], i, 1.0f, 5 - i);
  const int32_t p1[] = {4, 0, 5, 2};
  for (int i = 0; i < 4; ++i) storage_.SetSlot(tables_.heads[1], i, 1.0f, p1[i]);
  auto plan = PlanEviction(layout_, tables_, storage_, 6, 1, {});
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->heads.size(), 1u);
  EXPECT_EQ(plan->heads[0].head_index, 0);
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{4, 5}));  // positions 1, 0
  plan = PlanEviction(layout_, tables_, storage_, 6, 3, {});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->blocks_freed, 3);
  // -0.0 and +0.0 are the same score.
  storage_.SetSlot(tables_.heads[0], 0, -0.0f, 5);
  storage_.SetSlot(tables_.heads[0], 1, 0.0f, 4);
  storage_.SetSlot(tables_.heads[0], 2, 0.0f, 3);
  plan = PlanEviction(layout_, tables_, storage_, 6, 1, {});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->heads[0].evicted_slots, (std::vector<int32_t>{1, 2}));  // positions 4, 3
}

TEST_F(SmallPlanTest, RejectsInconsistentInput) {
  EXPECT_EQ(PlanEviction(layout_, tables_, storage_, 6, -1, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanEviction(layout_, tables_, storage_, -1, 1, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanEviction(layout_, tables_, storage_, 6, 1, {-1, 0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // More KVs than tokens.
  auto st = PlanEviction(layout_, tables_, storage_, 5, 1, {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("num_tokens"), std::string::npos) << st;
  SequenceBlockTables bad = tables_;
  bad.heads[1].blocks.push_back(3);
  EXPECT_NE(PlanEviction(layout_, bad, storage_, 6, 1, {}).status().message().find("4 KVs in 2"),
            std::string::npos);
  bad = tables_;
  bad.heads[1].blocks[0] = 8;
  EXPECT_NE(PlanEviction(layout_, bad, storage_, 6, 1, {}).status().message().find("out-of-range"),
            std::string::npos);
  bad = tables_;
  bad.heads.pop_back();
  EXPECT_EQ(PlanEviction(layout_, bad, storage_, 6, 1, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SmallPlanTest, PlanFromBlockCounts) {
  auto plan = PlanFromBlockCounts(layout_, tables_, std::vector<int32_t>{2, 1});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->heads.size(), 2u);
  EXPECT_EQ(plan->heads[0].kvs_evicted, 6);
  EXPECT_EQ(plan->heads[0].freed_blocks, (std::vector<int32_t>{5, 2}));
  EXPECT_EQ(plan->heads[1].kvs_evicted, 4);
  EXPECT_TRUE(plan->heads[1].evicted_slots.empty());
  EXPECT_EQ(plan->blocks_freed, 3);
  EXPECT_EQ(plan->kvs_evicted, 10);
  EXPECT_EQ(PlanFromBlockCounts(layout_, tables_, std::vector<int32_t>{3, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanFromBlockCounts(layout_, tables_, std::vector<int32_t>{1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

struct RandomCase {
  KvLayout layout;
  SequenceBlockTables tables;
  int64_t num_tokens = 0;
  int64_t evict_blocks = 0;
  EvictionConstraints constraints;
};

RandomCase MakeCase(std::mt19937& gen, FakeKvStorage** storage_out,
                    std::unique_ptr<FakeKvStorage>* owner) {
  static constexpr int32_t kBlockSizes[] = {1, 8, 16, 32, 2, 4};
  RandomCase c;
  c.layout.block_size = kBlockSizes[gen() % (gen() % 4 == 0 ? 6 : 4)];
  c.layout.num_layers = 1 + gen() % 3;
  c.layout.num_kv_heads = 1 + gen() % 4;
  c.layout.head_dim = 8;
  const int32_t b = c.layout.block_size;
  c.num_tokens = gen() % (b * (1 + gen() % 7) + 3);
  const int32_t num_heads = c.layout.heads_per_seq();
  std::vector<int32_t> n(num_heads);
  int64_t blocks = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const uint32_t kind = gen() % 3;
    n[h] = kind == 0 ? static_cast<int32_t>(c.num_tokens)
                     : static_cast<int32_t>(gen() % (c.num_tokens + 1));
    blocks += (n[h] + b - 1) / b;
  }
  c.layout.num_blocks = blocks + gen() % 5 + 1;
  std::vector<int32_t> ids(c.layout.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), gen);
  *owner = std::make_unique<FakeKvStorage>(c.layout.num_blocks, b);
  FakeKvStorage& storage = **owner;
  const bool ties = gen() % 2 == 0;
  size_t next = 0;
  c.tables.heads.resize(num_heads);
  for (int32_t h = 0; h < num_heads; ++h) {
    HeadBlockTable& head = c.tables.heads[h];
    head.num_kvs = n[h];
    for (int32_t i = 0; i < (n[h] + b - 1) / b; ++i) head.blocks.push_back(ids[next++]);
    // A random subset of positions, in shuffled slot order (compaction does not keep order).
    std::vector<int32_t> pos(c.num_tokens);
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), gen);
    for (int32_t s = 0; s < n[h]; ++s) storage.SetSlot(head, s, RandomScore(&gen, ties), pos[s]);
  }
  c.evict_blocks = gen() % (blocks + 3);
  if (gen() % 8 == 0) c.evict_blocks = 0;
  c.constraints.protected_window = gen() % 3 == 0 ? 0 : gen() % (c.num_tokens + 2);
  c.constraints.sink_tokens = gen() % 2 == 0 ? 0 : gen() % 6;
  c.constraints.min_kvs_per_head = gen() % 2 == 0 ? 0 : gen() % (3 * b + 1);
  *storage_out = &storage;
  return c;
}

// Thousands of random cases: the planner equals the reference and every property holds.
TEST(EvictionPlannerPropertyTest, MatchesReferenceAndKeepsEveryProperty) {
  std::mt19937 gen(2024);
  EvictionPlanner planner;  // reused: scratch must not leak between calls
  int64_t nonempty = 0, partial = 0, with_moves = 0;
  for (int trial = 0; trial < 6000; ++trial) {
    std::unique_ptr<FakeKvStorage> owner;
    FakeKvStorage* storage = nullptr;
    const RandomCase c = MakeCase(gen, &storage, &owner);
    SCOPED_TRACE(::testing::Message()
                 << "trial " << trial << " b=" << c.layout.block_size
                 << " heads=" << c.layout.heads_per_seq() << " tokens=" << c.num_tokens
                 << " B=" << c.evict_blocks << " P=" << c.constraints.protected_window
                 << " S=" << c.constraints.sink_tokens << " m=" << c.constraints.min_kvs_per_head);
    auto plan =
        planner.Plan(c.layout, c.tables, *storage, c.num_tokens, c.evict_blocks, c.constraints);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const auto ref =
        ReferencePlan(c.layout, c.tables, *storage, c.num_tokens, c.evict_blocks, c.constraints);
    const int32_t b = c.layout.block_size;
    std::vector<int32_t> k(c.layout.heads_per_seq(), 0);
    int64_t freed = 0, evicted = 0, moves = 0;
    int32_t previous = -1;
    for (const HeadEviction& ev : plan->heads) {
      ASSERT_GT(ev.head_index, previous);
      previous = ev.head_index;
      k[ev.head_index] = ev.blocks_freed;
      const HeadBlockTable& head = c.tables.heads[ev.head_index];
      const int32_t n = head.num_kvs;
      const int32_t r = (n - 1) % b + 1;
      ASSERT_EQ(ev.num_kvs_before, n);
      ASSERT_GE(ev.blocks_freed, 1);
      ASSERT_EQ(ev.kvs_evicted, (ev.blocks_freed - 1) * b + r);
      const int32_t kept = n - ev.kvs_evicted;
      ASSERT_EQ(kept % b, 0) << "a compressed head must hold only full blocks";
      ASSERT_GE(kept, (c.constraints.min_kvs_per_head + b - 1) / b * b);
      // Selected set equals the reference's.
      ASSERT_EQ(ev.evicted_slots, ref.evicted[ev.head_index]) << "head " << ev.head_index;
      // Frees exactly the tail blocks it names.
      ASSERT_EQ(static_cast<int32_t>(ev.freed_blocks.size()), ev.blocks_freed);
      ASSERT_TRUE(std::equal(ev.freed_blocks.begin(), ev.freed_blocks.end(),
                             head.blocks.end() - ev.blocks_freed));
      // Nothing protected, sunk, NaN or +inf is evicted; evicted scores <= surviving ones.
      std::set<int32_t> ev_set(ev.evicted_slots.begin(), ev.evicted_slots.end());
      ASSERT_EQ(ev_set.size(), ev.evicted_slots.size());
      float max_evicted = -kInf;
      for (int32_t s : ev.evicted_slots) {
        ASSERT_LT(s, n);
        const float score = storage->SlotScore(head, s);
        ASSERT_TRUE(Evictable(score, storage->SlotPosition(head, s), c.num_tokens, c.constraints));
        max_evicted = std::max(max_evicted, score);
      }
      for (int32_t s = 0; s < n; ++s) {
        const float score = storage->SlotScore(head, s);
        if (!ev_set.count(s) &&
            Evictable(score, storage->SlotPosition(head, s), c.num_tokens, c.constraints)) {
          ASSERT_GE(score, max_evicted);
        }
      }
      // Moves: dst < n' <= src, every hole below n' filled once, sources are survivors.
      std::set<int32_t> dsts;
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
        // Sources are in blocks this plan frees.
        ASSERT_NE(std::find(ev.freed_blocks.begin(), ev.freed_blocks.end(), m.src_block),
                  ev.freed_blocks.end());
      }
      for (int32_t s : ev.evicted_slots) {
        if (s < kept) {
          ASSERT_TRUE(dsts.count(s)) << "hole " << s << " not filled";
        }
      }
      freed += ev.blocks_freed;
      evicted += ev.kvs_evicted;
      moves += static_cast<int64_t>(ev.moves.size());
      with_moves += !ev.moves.empty();
    }
    ASSERT_EQ(k, ref.blocks);
    ASSERT_EQ(plan->blocks_freed, freed);
    ASSERT_EQ(plan->kvs_evicted, evicted);
    ASSERT_EQ(plan->num_moves, moves);
    ASSERT_EQ(plan->blocks_requested, c.evict_blocks);
    ASSERT_LE(freed, c.evict_blocks);
    // It frees exactly B unless the constraints leave fewer candidate blocks.
    int64_t ref_available = 0;
    {
      const auto all = ReferencePlan(c.layout, c.tables, *storage, c.num_tokens,
                                     std::numeric_limits<int64_t>::max(), c.constraints);
      for (int32_t x : all.blocks) ref_available += x;
    }
    ASSERT_EQ(freed, std::min(c.evict_blocks, ref_available));
    nonempty += !plan->empty();
    partial += freed > 0 && freed < ref_available;
  }
  // The generator exercised the interesting regimes.
  EXPECT_GT(nonempty, 2000);
  EXPECT_GT(partial, 500);
  EXPECT_GT(with_moves, 1000);
}

// Large heads with many exact ties at the threshold: the radix select's tie step decides.
TEST(EvictionPlannerPropertyTest, HeavyTiesAtTheThreshold) {
  std::mt19937 gen(99);
  for (int trial = 0; trial < 300; ++trial) {
    KvLayout layout;
    layout.num_layers = 2;
    layout.num_kv_heads = 4;
    layout.head_dim = 8;
    layout.block_size = trial % 2 ? 16 : 8;
    const int32_t b = layout.block_size;
    const int32_t tokens = 100 + gen() % 300;
    layout.num_blocks = 8 * ((tokens + b - 1) / b);
    FakeKvStorage storage(layout.num_blocks, b);
    SequenceBlockTables tables;
    tables.heads.resize(8);
    int32_t next = 0;
    for (auto& head : tables.heads) {
      head.num_kvs = tokens - static_cast<int32_t>(gen() % 3) * b;
      for (int32_t i = 0; i < (head.num_kvs + b - 1) / b; ++i) head.blocks.push_back(next++);
      for (int32_t s = 0; s < head.num_kvs; ++s) {
        storage.SetSlot(head, s, static_cast<float>(gen() % 3), s);
      }
    }
    const int64_t budget = gen() % (next + 1);
    const EvictionConstraints constraints{static_cast<int32_t>(gen() % 40), 0, 0};
    auto plan = PlanEviction(layout, tables, storage, tokens, budget, constraints);
    ASSERT_TRUE(plan.ok());
    const auto ref = ReferencePlan(layout, tables, storage, tokens, budget, constraints);
    std::vector<int32_t> k(8, 0);
    for (const HeadEviction& ev : plan->heads) {
      k[ev.head_index] = ev.blocks_freed;
      ASSERT_EQ(ev.evicted_slots, ref.evicted[ev.head_index]);
    }
    ASSERT_EQ(k, ref.blocks) << "trial " << trial;
  }
}

}  // namespace
}  // namespace kvc
