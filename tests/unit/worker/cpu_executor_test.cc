// Unit tests of CpuExecutor: creation and batch validation errors, where Forward() writes K/V,
// positions and scores, MoveKv and the storage accessors, independence from block-id order,
// and random-weights models.
#include "worker/cpu_executor.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/weights.h"
#include "tests/unit/worker/cpu_executor_test_util.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;
using testing_util::TestBlockAllocator;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.name = "small";
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  return c;
}

std::shared_ptr<const ModelWeights> SmallWeights(uint64_t seed = 5) {
  auto w = ModelWeights::Random(SmallConfig(), seed);
  EXPECT_TRUE(w.ok()) << w.status();
  return std::make_shared<const ModelWeights>(std::move(*w));
}

TEST(CpuExecutorTest, CreateValidatesArguments) {
  auto w = SmallWeights();
  EXPECT_EQ(CpuExecutor::Create(nullptr, 10, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto zero_blocks = CpuExecutor::Create(w, 0, 16);
  ASSERT_FALSE(zero_blocks.ok());
  EXPECT_THAT(zero_blocks.status().message(), HasSubstr("num_blocks"));
  auto zero_bs = CpuExecutor::Create(w, 10, 0);
  ASSERT_FALSE(zero_bs.ok());
  EXPECT_THAT(zero_bs.status().message(), HasSubstr("block_size"));

  auto e = CpuExecutor::Create(w, 10, 4);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)->backend(), "cpu");
  const KvLayout& l = (*e)->layout();
  EXPECT_EQ(l.num_layers, 2);
  EXPECT_EQ(l.num_kv_heads, 2);
  EXPECT_EQ(l.head_dim, 8);
  EXPECT_EQ(l.block_size, 4);
  EXPECT_EQ(l.num_blocks, 10);
  EXPECT_EQ((*e)->k_cache().size(), 10u * 4 * 8);
  EXPECT_EQ((*e)->positions().size(), 40u);
  EXPECT_EQ(&(*e)->config(), &w->config);
}

class ExecutorFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = CpuExecutor::Create(SmallWeights(), 32, 4);
    ASSERT_TRUE(e.ok()) << e.status();
    exec_ = std::move(*e);
    alloc_ = std::make_unique<TestBlockAllocator>(exec_->layout(), 3);
  }

  absl::Status Run(const ForwardSequence& s, ForwardOutput* out = nullptr) {
    ForwardBatch b;
    b.seqs.push_back(s);
    ForwardOutput local;
    return exec_->Forward(b, out ? out : &local);
  }

  std::unique_ptr<CpuExecutor> exec_;
  std::unique_ptr<TestBlockAllocator> alloc_;
};

TEST_F(ExecutorFixture, ForwardRejectsInconsistentBatches) {
  std::vector<int32_t> toks = {1, 2, 3};
  SequenceBlockTables t = alloc_->NewSequence();
  alloc_->Reserve(&t, 3);
  ForwardSequence s;
  s.seq_id = 7;
  s.tokens = toks;
  s.tables = &t;
  ASSERT_TRUE(Run(s).ok());

  struct Case {
    std::function<void(ForwardSequence*, SequenceBlockTables*, std::vector<int32_t>*)> mutate;
    std::string expect;
  };
  const Case cases[] = {
      {[](ForwardSequence* s, SequenceBlockTables*, std::vector<int32_t>*) { s->tables = nullptr; },
       "tables is null"},
      {[](ForwardSequence*, SequenceBlockTables* t, std::vector<int32_t>*) { t->heads.pop_back(); },
       "heads, expected 4"},
      {[](ForwardSequence*, SequenceBlockTables* t, std::vector<int32_t>*) {
         t->heads[1].num_kvs = 2;
       },
       "num_kvs 2 < tokens 3"},
      {[](ForwardSequence*, SequenceBlockTables* t, std::vector<int32_t>*) {
         t->heads[2].blocks.push_back(5);
       },
       "expected 1"},
      {[](ForwardSequence*, SequenceBlockTables* t, std::vector<int32_t>*) {
         t->heads[3].blocks[0] = 32;
       },
       "block id 32"},
      {[](ForwardSequence*, SequenceBlockTables*, std::vector<int32_t>* v) { (*v)[1] = 50; },
       "tokens[1] = 50"},
      {[](ForwardSequence*, SequenceBlockTables*, std::vector<int32_t>* v) { (*v)[0] = -1; },
       "tokens[0] = -1"},
      {[](ForwardSequence* s, SequenceBlockTables*, std::vector<int32_t>*) { s->tokens = {}; },
       "tokens is empty"},
      {[](ForwardSequence* s, SequenceBlockTables*, std::vector<int32_t>*) {
         s->start_position = -4;
       },
       "start_position"},
  };
  for (const Case& c : cases) {
    SequenceBlockTables t2 = t;
    std::vector<int32_t> toks2 = toks;
    ForwardSequence s2 = s;
    s2.tables = &t2;
    s2.tokens = toks2;
    c.mutate(&s2, &t2, &toks2);
    absl::Status st = Run(s2);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.expect;
    EXPECT_THAT(st.message(), HasSubstr(c.expect));
    EXPECT_THAT(st.message(), HasSubstr("seq_id 7"));
  }
  ForwardBatch b;
  EXPECT_EQ(exec_->Forward(b, nullptr).code(), absl::StatusCode::kInvalidArgument);
  ForwardOutput out;
  EXPECT_TRUE(exec_->Forward(b, &out).ok());  // empty batch: no logits
  EXPECT_TRUE(out.logits.empty());
}

TEST_F(ExecutorFixture, ForwardAppendsKvPositionAndZeroScoreIntoTailSlots) {
  // First 5 tokens at positions 10..14 (e.g. a second chunk), then 2 more.
  std::vector<int32_t> toks = {4, 8, 15, 16, 23};
  SequenceBlockTables t = alloc_->NewSequence();
  alloc_->Reserve(&t, 5);
  for (const HeadBlockTable& h : t.heads) {
    for (int32_t b : h.blocks) {
      for (int o = 0; o < 4; ++o) exec_->SetScore(b, o, 9.0f);
    }
  }
  ForwardSequence s;
  s.tokens = toks;
  s.start_position = 10;
  s.tables = &t;
  s.all_logits = true;
  ForwardOutput out;
  ASSERT_TRUE(Run(s, &out).ok());
  EXPECT_EQ(out.vocab_size, 50);
  EXPECT_EQ(out.logits.size(), 5u * 50);
  for (const HeadBlockTable& h : t.heads) {
    for (int i = 0; i < 5; ++i) {
      const int32_t b = h.blocks[i / 4], o = i % 4;
      EXPECT_EQ(exec_->Position(b, o), 10 + i);
      EXPECT_EQ(exec_->Score(b, o), 0.0f);
      double norm = 0;
      for (float x : exec_->Key(b, o)) norm += x * x;
      EXPECT_GT(norm, 0.0);
    }
    EXPECT_EQ(exec_->Score(h.blocks[1], 1), 9.0f);  // slot 5: not written yet
  }
  // Two more tokens go to slots 5 and 6 of every head.
  std::vector<int32_t> more = {42, 7};
  alloc_->Reserve(&t, 2);
  s.tokens = more;
  s.start_position = 15;
  s.all_logits = false;
  ASSERT_TRUE(Run(s, &out).ok());
  EXPECT_EQ(out.logits.size(), 50u);  // last token only
  for (const HeadBlockTable& h : t.heads) {
    EXPECT_EQ(exec_->Position(h.blocks[1], 1), 15);
    EXPECT_EQ(exec_->Position(h.blocks[1], 2), 16);
    EXPECT_EQ(exec_->Score(h.blocks[1], 1), 0.0f);
  }
  // Layer 0 and layer 1 K differ for the same token (different weights).
  const auto k0 = exec_->Key(t.heads[0].blocks[0], 0);
  const auto k1 = exec_->Key(t.heads[2].blocks[0], 0);
  EXPECT_NE(std::vector<float>(k0.begin(), k0.end()), std::vector<float>(k1.begin(), k1.end()));
}

TEST_F(ExecutorFixture, MoveKvCopiesEverythingAndChecksRanges) {
  std::vector<int32_t> toks = {1, 2, 3, 4, 5, 6};
  SequenceBlockTables t = alloc_->NewSequence();
  alloc_->Reserve(&t, 6);
  ForwardSequence s;
  s.tokens = toks;
  s.tables = &t;
  ASSERT_TRUE(Run(s).ok());
  const int32_t src_b = t.heads[0].blocks[1], dst_b = t.heads[0].blocks[0];
  exec_->SetScore(src_b, 1, 2.5f);
  const auto k = exec_->Key(src_b, 1);
  const auto v = exec_->Value(src_b, 1);
  const std::vector<float> k_src(k.begin(), k.end()), v_src(v.begin(), v.end());
  ASSERT_TRUE(exec_->MoveKv(src_b, 1, dst_b, 2).ok());
  const auto k2 = exec_->Key(dst_b, 2);
  const auto v2 = exec_->Value(dst_b, 2);
  EXPECT_EQ(std::vector<float>(k2.begin(), k2.end()), k_src);
  EXPECT_EQ(std::vector<float>(v2.begin(), v2.end()), v_src);
  EXPECT_EQ(exec_->Score(dst_b, 2), 2.5f);
  EXPECT_EQ(exec_->Position(dst_b, 2), 5);
  EXPECT_TRUE(exec_->MoveKv(src_b, 1, src_b, 1).ok());
  EXPECT_EQ(exec_->MoveKv(32, 0, 0, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(exec_->MoveKv(0, 4, 0, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(exec_->MoveKv(0, 0, -1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(exec_->mutable_scores().size(), 32u * 4);
}

TEST(CpuExecutorTest, LogitsDoNotDependOnBlockIdsOrBatchComposition) {
  auto w = SmallWeights(11);
  std::vector<std::vector<float>> results;
  for (uint32_t seed : {0u, 1u, 2u}) {
    auto e = CpuExecutor::Create(w, 64, 4);
    ASSERT_TRUE(e.ok());
    TestBlockAllocator alloc((*e)->layout(), seed);
    std::vector<int32_t> a = {3, 1, 4, 1, 5, 9, 2, 6, 5}, b = {2, 7, 1, 8};
    SequenceBlockTables ta = alloc.NewSequence(), tb = alloc.NewSequence();
    alloc.Reserve(&ta, 9);
    alloc.Reserve(&tb, 4);
    ForwardBatch batch;
    batch.seqs.resize(seed == 2 ? 1 : 2);
    batch.seqs[0].tokens = a;
    batch.seqs[0].tables = &ta;
    batch.seqs[0].all_logits = true;
    if (seed != 2) {
      batch.seqs[1].tokens = b;
      batch.seqs[1].tables = &tb;
    }
    ForwardOutput out;
    ASSERT_TRUE((*e)->Forward(batch, &out).ok());
    out.logits.resize(9 * 50);  // sequence a's rows
    for (float x : out.logits) ASSERT_TRUE(std::isfinite(x));
    results.push_back(out.logits);
  }
  // Same slots in the same logical order: bit-identical whatever the block ids; and a row does
  // not depend on which other sequences share its matmuls.
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
}

TEST(CpuExecutorTest, RandomWeightsAreDeterministic) {
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    auto e = CpuExecutor::Create(SmallWeights(99), 16, 8);
    ASSERT_TRUE(e.ok());
    TestBlockAllocator alloc((*e)->layout(), 0);
    SequenceBlockTables t = alloc.NewSequence();
    alloc.Reserve(&t, 3);
    std::vector<int32_t> toks = {0, 49, 25};
    ForwardBatch batch;
    batch.seqs.resize(1);
    batch.seqs[0].tokens = toks;
    batch.seqs[0].tables = &t;
    ForwardOutput out;
    ASSERT_TRUE((*e)->Forward(batch, &out).ok());
    ASSERT_EQ(out.logits.size(), 50u);
    if (rep == 0) {
      first = out.logits;
    } else {
      EXPECT_EQ(out.logits, first);
    }
  }
}

}  // namespace
}  // namespace kvc
