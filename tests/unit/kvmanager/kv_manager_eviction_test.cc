// KvManager + eviction planner + a fake executor storage: plan, apply, run the moves, and check
// that every head keeps exactly its surviving KVs and every invariant holds.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/kv_manager.h"
#include "tests/unit/kvmanager/eviction_test_util.h"

namespace kvc {
namespace {

using ::kvc::testing::FakeKvStorage;
using ::kvc::testing::RandomScore;

KvManagerOptions Options(int32_t layers, int32_t heads, int32_t block_size, int64_t blocks) {
  KvManagerOptions options;
  options.layout.num_layers = layers;
  options.layout.num_kv_heads = heads;
  options.layout.head_dim = 8;
  options.layout.block_size = block_size;
  options.layout.num_blocks = blocks;
  return options;
}

// The executor side of Append: writes position and score of the n newest KVs of every head.
void WriteAppended(const KvManager& kv, int64_t seq, int32_t n, FakeKvStorage* storage,
                   std::mt19937* gen) {
  const SequenceBlockTables* t = kv.Tables(seq);
  const int64_t tokens = kv.Usage(seq)->tokens;
  for (const HeadBlockTable& head : t->heads) {
    for (int32_t i = 0; i < n; ++i) {
      storage->SetSlot(head, head.num_kvs - n + i, RandomScore(gen, (*gen)() % 2 == 0),
                       static_cast<int32_t>(tokens - n + i));
    }
  }
}

std::multiset<int32_t> HeadPositions(const FakeKvStorage& storage, const HeadBlockTable& head) {
  std::multiset<int32_t> out;
  for (int32_t s = 0; s < head.num_kvs; ++s) out.insert(storage.SlotPosition(head, s));
  return out;
}

class KvManagerEvictionTest : public ::testing::Test {
 protected:
  // L=1, H=2, b=4: one sequence of 10 tokens (3 blocks per head, r = 2).
  void SetUp() override {
    ASSERT_TRUE(kv_.AddSequence(1).ok());
    ASSERT_TRUE(kv_.Append(1, 10).ok());
    const SequenceBlockTables* t = kv_.Tables(1);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 10; ++s) {
        // Head 0 prefers to drop early tokens, head 1 late ones.
        storage_.SetSlot(t->heads[h], s, h == 0 ? static_cast<float>(s) : 10.0f - s, s);
      }
    }
  }
  KvManager kv_{Options(1, 2, 4, 20)};
  FakeKvStorage storage_{20, 4};
  EvictionPlanner planner_;
};

TEST_F(KvManagerEvictionTest, ApplyUpdatesTablesPoolCountersAndStats) {
  auto plan = kv_.PlanEviction(1, storage_, 3, {}, &planner_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->blocks_freed, 3);
  EXPECT_EQ(kv_.num_free_blocks(), 14);
  std::vector<KvMove> moves;
  ASSERT_TRUE(kv_.ApplyEviction(1, *plan, CompressionTrigger::kPrefill, &moves).ok());
  storage_.RunMoves(moves);
  EXPECT_EQ(kv_.num_free_blocks(), 17);
  EXPECT_TRUE(kv_.CheckInvariants().ok()) << kv_.CheckInvariants();
  const SequenceBlockTables* t = kv_.Tables(1);
  int64_t held = 0;
  for (const HeadBlockTable& head : t->heads) {
    EXPECT_EQ(head.num_kvs % 4, 0);
    held += head.num_kvs;
  }
  EXPECT_EQ(held, 20 - plan->kvs_evicted);
  auto usage = kv_.Usage(1);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->tokens, 10);
  EXPECT_EQ(usage->kvs_held, held);
  EXPECT_EQ(usage->kvs_uncompressed, 20);
  EXPECT_EQ(usage->compressions, 1);
  EXPECT_EQ(usage->evicted_kvs, plan->kvs_evicted);
  EXPECT_EQ(usage->blocks, 3);
  const KvStats s = kv_.Stats(true);
  EXPECT_EQ(s.evicted_kvs_total, plan->kvs_evicted);
  EXPECT_EQ(s.moved_kvs_total, plan->num_moves);
  EXPECT_EQ(s.compactions_total, static_cast<int64_t>(plan->heads.size()));
  EXPECT_EQ(s.compressions_by_trigger.at("prefill"), 1);
  EXPECT_EQ(s.kvs_held, held);
  EXPECT_EQ(s.kvs_uncompressed, 20);
  EXPECT_DOUBLE_EQ(s.capacity.compression_ratio, 20.0 / held);
  EXPECT_EQ(s.capacity.physical_free_tokens, 17 * 4 / 2);
  EXPECT_EQ(s.capacity.effective_free_tokens,
            static_cast<int64_t>(34 * (20.0 / static_cast<double>(held))));
  EXPECT_EQ(s.layers[0].head_kvs, (std::vector<int64_t>{t->heads[0].num_kvs, t->heads[1].num_kvs}));
  // Per-head lengths now differ in block phase: every compressed head (full blocks) needs a new
  // block for the next token.
  int64_t full = 0;
  for (const HeadBlockTable& head : t->heads) full += head.num_kvs % 4 == 0;
  EXPECT_EQ(kv_.BlocksNeededToAppend(1, 1), full);
  ASSERT_TRUE(kv_.Append(1, 1).ok());
  EXPECT_TRUE(kv_.CheckInvariants().ok());
  ASSERT_TRUE(kv_.FreeSequence(1).ok());
  EXPECT_EQ(kv_.num_free_blocks(), 20);
  EXPECT_EQ(kv_.Stats(false).evicted_kvs_total, plan->kvs_evicted);  // counters survive
}

TEST_F(KvManagerEvictionTest, StaleMalformedOrForeignPlansChangeNothing) {
  auto plan = kv_.PlanEviction(1, storage_, 2, {}, &planner_);
  ASSERT_TRUE(plan.ok());
  ASSERT_FALSE(plan->empty());
  EXPECT_EQ(kv_.ApplyEviction(2, *plan, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kNotFound);
  EvictionPlan bad = *plan;
  bad.heads[0].kvs_evicted += 1;
  EXPECT_EQ(kv_.ApplyEviction(1, bad, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  bad = *plan;
  bad.heads[0].blocks_freed = 4;
  EXPECT_EQ(kv_.ApplyEviction(1, bad, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  bad = *plan;
  bad.heads.push_back(bad.heads[0]);  // duplicate head
  EXPECT_EQ(kv_.ApplyEviction(1, bad, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  bad = *plan;
  bad.heads[0].freed_blocks[0] = 19;
  EXPECT_EQ(kv_.ApplyEviction(1, bad, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  // A second sequence with the same shape: the plan's blocks are not its blocks.
  ASSERT_TRUE(kv_.AddSequence(2).ok());
  ASSERT_TRUE(kv_.Append(2, 10).ok());
  EXPECT_EQ(kv_.ApplyEviction(2, *plan, CompressionTrigger::kPrefill, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  // The sequence grew after planning: stale.
  ASSERT_TRUE(kv_.Append(1, 1).ok());
  std::vector<KvMove> moves;
  EXPECT_EQ(kv_.ApplyEviction(1, *plan, CompressionTrigger::kPrefill, &moves).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(moves.empty());
  EXPECT_EQ(kv_.Stats(false).evicted_kvs_total, 0);
  EXPECT_EQ(kv_.Usage(1)->kvs_held, 22);
  EXPECT_TRUE(kv_.CheckInvariants().ok());
}

TEST_F(KvManagerEvictionTest, CountsOnlyPlanFromTheDevicePath) {
  auto plan = PlanFromBlockCounts(kv_.layout(), *kv_.Tables(1), std::vector<int32_t>{1, 2});
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(kv_.ApplyEviction(1, *plan, CompressionTrigger::kMemoryPressure, nullptr).ok());
  EXPECT_EQ(kv_.Tables(1)->heads[0].num_kvs, 8);
  EXPECT_EQ(kv_.Tables(1)->heads[1].num_kvs, 4);
  EXPECT_EQ(kv_.num_free_blocks(), 17);
  EXPECT_EQ(kv_.Stats(false).compressions_by_trigger.at("memory_pressure"), 1);
  EXPECT_TRUE(kv_.CheckInvariants().ok());
  // An empty plan is a no-op that counts no compression.
  ASSERT_TRUE(kv_.ApplyEviction(1, EvictionPlan{}, CompressionTrigger::kInterval, nullptr).ok());
  EXPECT_EQ(kv_.Stats(false).compressions_by_trigger.count("interval"), 0u);
  EXPECT_EQ(kv_.Usage(1)->compressions, 1);
}

TEST_F(KvManagerEvictionTest, BudgetThroughTheManager) {
  CompressionSettings settings;
  settings.mode = BudgetMode::kMaxCacheTokens;
  settings.max_cache_tokens = 5;  // ceil(5/4) = 2 blocks per head on average -> 4 blocks
  auto evict = kv_.EvictBlocksForBudget(1, settings);
  ASSERT_TRUE(evict.ok());
  EXPECT_EQ(*evict, 6 - 4);
  EXPECT_EQ(kv_.EvictBlocksForBudget(9, settings).status().code(), absl::StatusCode::kNotFound);
  auto plan = kv_.PlanEviction(1, storage_, *evict, settings.constraints, &planner_);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(kv_.ApplyEviction(1, *plan, CompressionTrigger::kPrefill, nullptr).ok());
  EXPECT_EQ(*kv_.EvictBlocksForBudget(1, settings), 0);
  EXPECT_EQ(kv_.PlanEviction(9, storage_, 1, {}, &planner_).status().code(),
            absl::StatusCode::kNotFound);
}

// Random lifecycles with compression: after every op the invariants hold, each head's slots
// [0, n) hold exactly its surviving positions, and counters add up.
TEST(KvManagerEvictionPropertyTest, RandomLifecyclesWithCompression) {
  std::mt19937 gen(777);
  static constexpr int32_t kBlockSizes[] = {1, 8, 16, 32};
  static constexpr CompressionTrigger kTriggers[] = {
      CompressionTrigger::kPrefill, CompressionTrigger::kMemoryPressure,
      CompressionTrigger::kInterval, CompressionTrigger::kContinual};
  int64_t applied = 0, with_moves = 0;
  for (int config = 0; config < 24; ++config) {
    const int32_t b = kBlockSizes[config % 4];
    const int32_t layers = 1 + gen() % 3;
    const int32_t heads = 1 + gen() % 3;
    const int64_t blocks = 50 + gen() % 400;
    KvManager kv(Options(layers, heads, b, blocks));
    FakeKvStorage storage(blocks, b);
    EvictionPlanner planner;
    std::map<int64_t, int64_t> tokens;
    int64_t next_id = 0;
    int64_t evicted_total = 0, moved_total = 0, compactions_total = 0;
    std::map<std::string, int64_t> by_trigger;
    for (int step = 0; step < 400; ++step) {
      const int op = gen() % 10;
      if (op == 0 || tokens.empty()) {
        ASSERT_TRUE(kv.AddSequence(next_id).ok());
        tokens[next_id++] = 0;
      } else if (op < 6) {
        auto it = std::next(tokens.begin(), gen() % tokens.size());
        const int32_t n = gen() % 3 == 0 ? gen() % (4 * b + 3) : 1;
        const int64_t need = kv.BlocksNeededToAppend(it->first, n);
        const int64_t free = kv.num_free_blocks();
        absl::Status st = kv.Append(it->first, n);
        ASSERT_EQ(st.ok(), need <= free) << st;
        if (st.ok()) {
          it->second += n;
          WriteAppended(kv, it->first, n, &storage, &gen);
        }
      } else if (op < 9) {
        auto it = std::next(tokens.begin(), gen() % tokens.size());
        const int64_t seq = it->first;
        CompressionSettings settings;
        settings.mode = gen() % 2 ? BudgetMode::kRate : BudgetMode::kMaxCacheTokens;
        settings.compression_rate = 1.0 + (gen() % 80) / 10.0;
        settings.max_cache_tokens = b + gen() % (4 * b);
        settings.constraints.protected_window = gen() % (2 * b + 1);
        settings.constraints.sink_tokens = gen() % 3;
        settings.constraints.min_kvs_per_head = gen() % 2 ? 0 : gen() % (2 * b);
        ASSERT_TRUE(settings.Validate(kv.layout()).ok());
        auto evict = kv.EvictBlocksForBudget(seq, settings);
        ASSERT_TRUE(evict.ok());
        auto plan = kv.PlanEviction(seq, storage, *evict, settings.constraints, &planner);
        ASSERT_TRUE(plan.ok()) << plan.status();
        // Expected survivors per head (positions), before anything changes.
        const SequenceBlockTables before = *kv.Tables(seq);
        std::vector<std::multiset<int32_t>> expect(before.heads.size());
        for (size_t h = 0; h < before.heads.size(); ++h) {
          expect[h] = HeadPositions(storage, before.heads[h]);
        }
        for (const HeadEviction& ev : plan->heads) {
          for (int32_t s : ev.evicted_slots) {
            const int32_t pos = storage.SlotPosition(before.heads[ev.head_index], s);
            ASSERT_GE(pos, settings.constraints.sink_tokens);
            ASSERT_LT(pos, it->second - settings.constraints.protected_window);
            expect[ev.head_index].erase(expect[ev.head_index].find(pos));
          }
        }
        const int64_t free_before = kv.num_free_blocks();
        std::vector<KvMove> moves;
        const CompressionTrigger trigger = kTriggers[gen() % 4];
        ASSERT_TRUE(kv.ApplyEviction(seq, *plan, trigger, &moves).ok());
        storage.RunMoves(moves);
        // The executor may now reuse the freed blocks: poison them.
        for (const HeadEviction& ev : plan->heads) {
          for (int32_t id : ev.freed_blocks) storage.Poison(id);
        }
        ASSERT_EQ(kv.num_free_blocks(), free_before + plan->blocks_freed);
        ASSERT_EQ(static_cast<int64_t>(moves.size()), plan->num_moves);
        const SequenceBlockTables* after = kv.Tables(seq);
        std::set<int32_t> compressed;
        for (const HeadEviction& ev : plan->heads) compressed.insert(ev.head_index);
        for (size_t h = 0; h < after->heads.size(); ++h) {
          ASSERT_EQ(HeadPositions(storage, after->heads[h]), expect[h]) << "head " << h;
          if (compressed.count(h)) {
            ASSERT_EQ(after->heads[h].num_kvs % b, 0);
          }
        }
        if (settings.mode == BudgetMode::kMaxCacheTokens && plan->blocks_freed == *evict) {
          ASSERT_EQ(*kv.EvictBlocksForBudget(seq, settings), 0);
        }
        evicted_total += plan->kvs_evicted;
        moved_total += plan->num_moves;
        compactions_total += static_cast<int64_t>(plan->heads.size());
        if (plan->blocks_freed > 0) {
          ++by_trigger[std::string(CompressionTriggerName(trigger))];
          ++applied;
        }
        with_moves += plan->num_moves > 0;
      } else {
        auto it = std::next(tokens.begin(), gen() % tokens.size());
        ASSERT_TRUE(kv.FreeSequence(it->first).ok());
        tokens.erase(it);
      }
      ASSERT_TRUE(kv.CheckInvariants().ok()) << kv.CheckInvariants();
      const KvStats s = kv.Stats(false);
      ASSERT_EQ(s.evicted_kvs_total, evicted_total);
      ASSERT_EQ(s.moved_kvs_total, moved_total);
      ASSERT_EQ(s.compactions_total, compactions_total);
      ASSERT_EQ(s.compressions_by_trigger, by_trigger);
      int64_t uncompressed = 0;
      for (const auto& [id, n] : tokens) uncompressed += n * layers * heads;
      ASSERT_EQ(s.kvs_uncompressed, uncompressed);
      // Per live sequence: every uncompressed KV is either held or was evicted.
      for (const auto& [id, n] : tokens) {
        auto usage = kv.Usage(id);
        ASSERT_TRUE(usage.ok());
        ASSERT_EQ(usage->tokens, n);
        ASSERT_EQ(usage->kvs_uncompressed - usage->kvs_held, usage->evicted_kvs);
      }
    }
  }
  EXPECT_GT(applied, 500);
  EXPECT_GT(with_moves, 300);
}

}  // namespace
}  // namespace kvc
