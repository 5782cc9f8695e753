// DistributedEvictionPlanner: for random sequences (random per-head lengths, block ids, scores
// with many ties, NaN/inf, protected windows, sinks, per-head minimums and budgets from zero to
// more than can be freed), N = 1, 2 and 4 ranks, each reading ONLY its own heads' storage
// (every other head's blocks are poisoned in its copy), produce exactly the single-rank
// EvictionPlanner's plan: the same k per head on every rank, the same evicted slots, moves and
// freed blocks.
#include "worker/tp_eviction.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "kvmanager/eviction_plan.h"

namespace kvc {
namespace {

struct RandomCase {
  KvLayout layout;
  SequenceBlockTables tables;
  std::vector<float> scores;  // [num_blocks * block_size]
  std::vector<int32_t> positions;
  int64_t num_tokens = 0;
  int64_t evict_blocks = 0;
  EvictionConstraints constraints;
};

RandomCase MakeCase(std::mt19937& rng, int32_t num_kv_heads) {
  RandomCase c;
  c.layout.num_layers = 1 + rng() % 3;
  c.layout.num_kv_heads = num_kv_heads;
  c.layout.head_dim = 8;
  c.layout.block_size = 1 + rng() % 8;
  c.num_tokens = 1 + rng() % 120;
  const int32_t b = c.layout.block_size;
  const int32_t heads = c.layout.heads_per_seq();
  // Enough blocks for every head at full length, then shuffled ids.
  const int64_t per_head = (c.num_tokens + b - 1) / b;
  c.layout.num_blocks = heads * per_head + 7;
  std::vector<int32_t> ids(c.layout.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  c.scores.assign(c.layout.num_blocks * b, 0.0f);
  c.positions.assign(c.layout.num_blocks * b, 0);
  const int score_mode = rng() % 3;  // 0: continuous, 1: few values (ties), 2: mixed + specials
  c.tables.heads.resize(heads);
  for (int32_t h = 0; h < heads; ++h) {
    HeadBlockTable& t = c.tables.heads[h];
    // Compressed heads hold fewer KVs than tokens; some hold none, some all.
    const int kind = rng() % 5;
    t.num_kvs = kind == 0   ? 0
                : kind == 1 ? static_cast<int32_t>(c.num_tokens)
                            : static_cast<int32_t>(rng() % (c.num_tokens + 1));
    const int32_t nb = (t.num_kvs + b - 1) / b;
    for (int32_t i = 0; i < nb; ++i) t.blocks.push_back(ids[next++]);
    // Distinct positions in [0, num_tokens), in random slot order (as after compaction).
    std::vector<int32_t> pos(c.num_tokens);
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), rng);
    pos.resize(t.num_kvs);
    if (rng() % 2) std::sort(pos.begin(), pos.end());
    for (int32_t s = 0; s < t.num_kvs; ++s) {
      const size_t idx = static_cast<size_t>(t.blocks[s / b]) * b + s % b;
      c.positions[idx] = pos[s];
      float v;
      if (score_mode == 0) {
        v = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
      } else if (score_mode == 1) {
        v = static_cast<float>(rng() % 4) * 0.25f;
      } else {
        const int k = rng() % 12;
        v = k == 0   ? std::numeric_limits<float>::quiet_NaN()
            : k == 1 ? std::numeric_limits<float>::infinity()
            : k == 2 ? -std::numeric_limits<float>::infinity()
            : k == 3 ? -0.0f
            : k == 4 ? 0.0f
            : k == 5 ? -static_cast<float>(rng() % 3)
                     : static_cast<float>(rng() % 5) * 0.5f;
      }
      c.scores[idx] = v;
    }
  }
  c.constraints.protected_window = rng() % 3 == 0 ? 0 : rng() % 16;
  c.constraints.sink_tokens = rng() % 3 == 0 ? rng() % 6 : 0;
  c.constraints.min_kvs_per_head = rng() % 3 == 0 ? rng() % 20 : 0;
  const int64_t total_blocks = heads * per_head;
  c.evict_blocks = rng() % 4 == 0 ? 0 : rng() % (total_blocks + 5);
  return c;
}

void ExpectPlansEqual(const EvictionPlan& got, const EvictionPlan& want) {
  EXPECT_EQ(got.blocks_requested, want.blocks_requested);
  EXPECT_EQ(got.blocks_freed, want.blocks_freed);
  EXPECT_EQ(got.kvs_evicted, want.kvs_evicted);
  EXPECT_EQ(got.num_moves, want.num_moves);
  ASSERT_EQ(got.heads.size(), want.heads.size());
  for (size_t i = 0; i < want.heads.size(); ++i) {
    const HeadEviction& g = got.heads[i];
    const HeadEviction& w = want.heads[i];
    SCOPED_TRACE(::testing::Message() << "head index " << w.head_index);
    EXPECT_EQ(g.head_index, w.head_index);
    EXPECT_EQ(g.num_kvs_before, w.num_kvs_before);
    EXPECT_EQ(g.blocks_freed, w.blocks_freed);
    EXPECT_EQ(g.kvs_evicted, w.kvs_evicted);
    EXPECT_EQ(g.evicted_slots, w.evicted_slots);
    EXPECT_EQ(g.freed_blocks, w.freed_blocks);
    ASSERT_EQ(g.moves.size(), w.moves.size());
    for (size_t m = 0; m < w.moves.size(); ++m) {
      EXPECT_EQ(g.moves[m].src_slot, w.moves[m].src_slot);
      EXPECT_EQ(g.moves[m].dst_slot, w.moves[m].dst_slot);
      EXPECT_EQ(g.moves[m].src_block, w.moves[m].src_block);
      EXPECT_EQ(g.moves[m].src_offset, w.moves[m].src_offset);
      EXPECT_EQ(g.moves[m].dst_block, w.moves[m].dst_block);
      EXPECT_EQ(g.moves[m].dst_offset, w.moves[m].dst_offset);
    }
  }
}

// Runs the distributed planner on `n` ranks, each over a copy of the storage in which every
// block of another rank's heads is poisoned.
std::vector<absl::StatusOr<RankEvictionPlan>> RunDistributed(const RandomCase& c, int32_t n,
                                                             uint32_t poison_seed) {
  auto sharding = KvHeadSharding::Create(c.layout.num_kv_heads, n);
  EXPECT_TRUE(sharding.ok()) << sharding.status();
  auto group = LocalCommunicatorGroup::Create(n);
  EXPECT_TRUE(group.ok()) << group.status();
  const int32_t b = c.layout.block_size;
  std::vector<std::vector<float>> scores(n, c.scores);
  std::vector<std::vector<int32_t>> positions(n, c.positions);
  std::mt19937 poison(poison_seed);
  for (int32_t r = 0; r < n; ++r) {
    for (size_t h = 0; h < c.tables.heads.size(); ++h) {
      if (sharding->RankOfHeadIndex(static_cast<int32_t>(h)) == r) continue;
      for (int32_t block : c.tables.heads[h].blocks) {
        for (int32_t o = 0; o < b; ++o) {
          scores[r][static_cast<size_t>(block) * b + o] =
              std::uniform_real_distribution<float>(-5.0f, 5.0f)(poison);
          positions[r][static_cast<size_t>(block) * b + o] = static_cast<int32_t>(poison() % 7);
        }
      }
    }
  }
  std::vector<absl::StatusOr<RankEvictionPlan>> out(n, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      FlatKvSlotReader reader(scores[r], positions[r], b);
      DistributedEvictionPlanner planner((*group)->communicator(r), *sharding);
      out[r] =
          planner.Plan(c.layout, c.tables, reader, c.num_tokens, c.evict_blocks, c.constraints);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

struct Param {
  int32_t world_size;
  int32_t num_kv_heads;
};
void PrintTo(const Param& p, std::ostream* os) {
  *os << p.world_size << " ranks, " << p.num_kv_heads << " kv heads";
}

class DistributedPlannerTest : public ::testing::TestWithParam<Param> {};

TEST_P(DistributedPlannerTest, RandomCasesGiveExactlyTheSingleRankPlan) {
  const Param p = GetParam();
  std::mt19937 rng(1000 + p.world_size * 31 + p.num_kv_heads);
  int64_t nonempty = 0, partial = 0;
  for (int iter = 0; iter < 400; ++iter) {
    SCOPED_TRACE(::testing::Message() << "case " << iter);
    const RandomCase c = MakeCase(rng, p.num_kv_heads);
    FlatKvSlotReader full(c.scores, c.positions, c.layout.block_size);
    EvictionPlanner planner;
    auto want = planner.Plan(c.layout, c.tables, full, c.num_tokens, c.evict_blocks, c.constraints);
    ASSERT_TRUE(want.ok()) << want.status();
    auto got = RunDistributed(c, p.world_size, iter);
    std::vector<int32_t> want_k(c.layout.heads_per_seq(), 0);
    for (const HeadEviction& h : want->heads) want_k[h.head_index] = h.blocks_freed;
    std::vector<EvictionPlan> locals;
    for (int32_t r = 0; r < p.world_size; ++r) {
      ASSERT_TRUE(got[r].ok()) << "rank " << r << ": " << got[r].status();
      EXPECT_EQ(got[r]->blocks_per_head, want_k) << "rank " << r;
      for (const HeadEviction& h : got[r]->local.heads) {
        EXPECT_EQ(h.head_index % c.layout.num_kv_heads / (c.layout.num_kv_heads / p.world_size), r)
            << "rank " << r << " planned head index " << h.head_index << " it does not own";
      }
      locals.push_back(got[r]->local);
    }
    auto merged = MergeRankPlans(locals);
    ASSERT_TRUE(merged.ok()) << merged.status();
    ExpectPlansEqual(*merged, *want);
    if (HasFatalFailure()) return;
    nonempty += !want->empty();
    partial +=
        want->blocks_freed > 0 && want->blocks_freed == c.evict_blocks &&
        std::any_of(want->heads.begin(), want->heads.end(), [&](const HeadEviction& h) {
          return h.blocks_freed < static_cast<int32_t>(c.tables.heads[h.head_index].blocks.size());
        });
  }
  // The random cases exercise real selections, not just the trivial ones.
  EXPECT_GT(nonempty, 150);
  EXPECT_GT(partial, 80);
}

INSTANTIATE_TEST_SUITE_P(Ranks, DistributedPlannerTest,
                         ::testing::Values(Param{1, 4}, Param{2, 4}, Param{4, 4}, Param{2, 8},
                                           Param{4, 8}),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return "N" + std::to_string(info.param.world_size) + "_H" +
                                  std::to_string(info.param.num_kv_heads);
                         });

TEST(KvHeadShardingTest, RequiresWholeHeadsPerRank) {
  EXPECT_EQ(KvHeadSharding::Create(4, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvHeadSharding::Create(4, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvHeadSharding::Create(0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  auto s = KvHeadSharding::Create(8, 4);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->heads_per_rank(), 2);
  EXPECT_EQ(s->first_kv_head(3), 6);
  EXPECT_EQ(s->RankOfKvHead(5), 2);
  EXPECT_EQ(s->RankOfHeadIndex(8 * 3 + 7), 3);  // layer 3, kv head 7
}

TEST(DistributedPlannerErrorsTest, BadArgumentsFailOnEveryRankWithoutHanging) {
  std::mt19937 rng(5);
  RandomCase c = MakeCase(rng, 4);
  auto group = LocalCommunicatorGroup::Create(2);
  ASSERT_TRUE(group.ok());
  auto sharding = KvHeadSharding::Create(4, 2);
  auto wrong_sharding = KvHeadSharding::Create(4, 4);  // for 4 ranks, group has 2
  std::vector<absl::Status> neg(2), mismatch(2), tables(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      FlatKvSlotReader reader(c.scores, c.positions, c.layout.block_size);
      DistributedEvictionPlanner planner((*group)->communicator(r), *sharding);
      neg[r] = planner.Plan(c.layout, c.tables, reader, c.num_tokens, -1, c.constraints).status();
      SequenceBlockTables short_tables = c.tables;
      short_tables.heads.pop_back();
      tables[r] =
          planner.Plan(c.layout, short_tables, reader, c.num_tokens, 1, c.constraints).status();
      DistributedEvictionPlanner wrong((*group)->communicator(r), *wrong_sharding);
      mismatch[r] = wrong.Plan(c.layout, c.tables, reader, c.num_tokens, 1, c.constraints).status();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(neg[r].code(), absl::StatusCode::kInvalidArgument) << neg[r];
    EXPECT_EQ(tables[r].code(), absl::StatusCode::kInvalidArgument) << tables[r];
    EXPECT_EQ(mismatch[r].code(), absl::StatusCode::kInvalidArgument) << mismatch[r];
  }
}

TEST(MergeRankPlansTest, RejectsDisagreeingPlans) {
  EvictionPlan a, b;
  a.blocks_requested = 3;
  b.blocks_requested = 4;
  std::vector<EvictionPlan> plans = {a, b};
  EXPECT_EQ(MergeRankPlans(plans).status().code(), absl::StatusCode::kInvalidArgument);
  HeadEviction h;
  h.head_index = 2;
  h.blocks_freed = 1;
  b.blocks_requested = 3;
  a.heads = {h};
  b.heads = {h};
  plans = {a, b};
  EXPECT_EQ(MergeRankPlans(plans).status().code(), absl::StatusCode::kInvalidArgument);
  HeadEviction h1 = h;
  h1.head_index = 1;
  b.heads = {h1};
  a.blocks_freed = 1;
  b.blocks_freed = 1;
  plans = {a, b};
  auto merged = MergeRankPlans(plans);
  ASSERT_TRUE(merged.ok());
  ASSERT_EQ(merged->heads.size(), 2u);
  EXPECT_EQ(merged->heads[0].head_index, 1);
  EXPECT_EQ(merged->heads[1].head_index, 2);
  EXPECT_EQ(merged->blocks_freed, 2);
}

}  // namespace
}  // namespace kvc
