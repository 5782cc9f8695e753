// TensorParallelCpuExecutor against the single-rank CpuExecutor on random small models
// (num_kv_heads 4, so 1, 2 and 4 ranks all divide; an odd vocabulary and an intermediate size
// that 4 does not divide, so the vocab and MLP shards are uneven): both executors run the same
// batches over the same KvManager tables in lockstep — several sequences of different lengths
// prefilled together, then 32 greedy decode steps, with a KV-Compress eviction (plan, metadata,
// compaction moves) in the middle. Logits agree within 1e-5 relative (bit for bit at N = 1),
// greedy tokens are identical, scores and positions read through slot_reader() agree, the
// distributed planner reproduces the host planner's plan, and each rank writes only its heads'
// blocks. Plus creation and argument errors.
#include "worker/tp_cpu_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_manager.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

enum class Variant { kLlama, kLlamaBiasesTied, kQwen2Tied };

std::shared_ptr<const ModelWeights> Weights(Variant v, uint64_t seed = 3) {
  ModelConfig c;
  c.name = "tp-test";
  c.vocab_size = 103;  // 4 does not divide it: the last vocab shard is shorter
  c.hidden_size = 48;
  c.intermediate_size = 90;  // 4 does not divide it: uneven MLP shards
  c.num_hidden_layers = 3;
  c.num_attention_heads = 8;  // GQA groups of 2
  c.num_key_value_heads = 4;
  c.head_dim = 8;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5f;
  if (v == Variant::kLlamaBiasesTied) {
    c.attention_bias = true;  // q, k, v and o biases
    c.mlp_bias = true;
    c.tie_word_embeddings = true;
  } else if (v == Variant::kQwen2Tied) {
    c.family = ModelFamily::kQwen2;  // q/k/v biases
    c.tie_word_embeddings = true;
  }
  auto w = ModelWeights::Random(c, seed);
  EXPECT_TRUE(w.ok()) << w.status();
  return std::make_shared<const ModelWeights>(std::move(*w));
}

double MaxRelError(std::span<const float> got, std::span<const float> want) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(want[i])));
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return err / std::max(mx, 1e-12);
}

int32_t Argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

struct Seq {
  int64_t id;
  std::vector<int32_t> tokens;
};

// Runs `batch` on both executors and checks the logits agree; returns the reference logits.
std::vector<float> ForwardBoth(Executor& ref, Executor& tp, const ForwardBatch& batch,
                               bool bit_exact, double* worst) {
  ForwardOutput a, b;
  EXPECT_TRUE(ref.Forward(batch, &a).ok());
  const absl::Status st = tp.Forward(batch, &b);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(b.vocab_size, a.vocab_size);
  EXPECT_EQ(b.logits.size(), a.logits.size());
  if (b.logits.size() != a.logits.size()) return a.logits;
  const int32_t vocab = a.vocab_size;
  for (size_t r = 0; r * vocab < a.logits.size(); ++r) {
    std::span<const float> ra(a.logits.data() + r * vocab, vocab);
    std::span<const float> rb(b.logits.data() + r * vocab, vocab);
    const double err = MaxRelError(rb, ra);
    *worst = std::max(*worst, err);
    if (bit_exact) {
      EXPECT_EQ(std::memcmp(ra.data(), rb.data(), sizeof(float) * vocab), 0) << "row " << r;
    } else {
      EXPECT_LE(err, 1e-5) << "row " << r;
    }
    EXPECT_EQ(Argmax(rb), Argmax(ra)) << "row " << r;
  }
  return a.logits;
}

// Scores and positions of every live slot, read through both slot readers.
void ExpectSlotsAgree(const KvManager& kv, const std::vector<Seq>& seqs, const Executor& ref,
                      const TensorParallelCpuExecutor& tp) {
  const int32_t b = kv.layout().block_size;
  double max_score = 0, max_err = 0;
  for (const Seq& s : seqs) {
    const SequenceBlockTables* t = kv.Tables(s.id);
    ASSERT_NE(t, nullptr);
    for (size_t h = 0; h < t->heads.size(); ++h) {
      const HeadBlockTable& head = t->heads[h];
      for (int32_t slot = 0; slot < head.num_kvs; ++slot) {
        const int32_t block = head.blocks[slot / b], off = slot % b;
        ASSERT_EQ(tp.OwnerOfBlock(block), tp.sharding().RankOfHeadIndex(h)) << "block " << block;
        ASSERT_EQ(tp.slot_reader().Position(block, off), ref.slot_reader().Position(block, off))
            << "head index " << h << " slot " << slot;
        const float want = ref.slot_reader().Score(block, off);
        max_score = std::max(max_score, std::fabs(static_cast<double>(want)));
        max_err = std::max(
            max_err, std::fabs(static_cast<double>(tp.slot_reader().Score(block, off) - want)));
      }
    }
  }
  EXPECT_GT(max_score, 0.0);
  EXPECT_LE(max_err, 1e-5 * std::max(1.0, max_score));
}

struct Case {
  Variant variant;
  int32_t tp;
  int32_t block_size;
};

class TpExecutorParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(TpExecutorParityTest, MatchesTheSingleRankExecutorThroughPrefillCompressionAndDecode) {
  const Case tc = GetParam();
  auto weights = Weights(tc.variant);
  const int64_t num_blocks = 1024;
  auto ref_or = CpuExecutor::Create(weights, num_blocks, tc.block_size);
  ASSERT_TRUE(ref_or.ok()) << ref_or.status();
  auto tp_or = TensorParallelCpuExecutor::Create(weights, num_blocks, tc.block_size, tc.tp);
  ASSERT_TRUE(tp_or.ok()) << tp_or.status();
  CpuExecutor& ref = **ref_or;
  TensorParallelCpuExecutor& tp = **tp_or;
  EXPECT_EQ(tp.tensor_parallel(), tc.tp);
  EXPECT_EQ(tp.backend(), "cpu");
  EXPECT_EQ(tp.layout().num_blocks, ref.layout().num_blocks);
  EXPECT_EQ(tp.layout().heads_per_seq(), ref.layout().heads_per_seq());
  KvManagerOptions ko;
  ko.layout = ref.layout();
  KvManager kv(ko);
  const bool bit_exact = tc.tp == 1;
  double worst = 0;
  // Blocks each rank's heads have held at some forward (a freed block may later serve a head of
  // another rank; the old rank's copy then stays behind, unread).
  std::vector<std::vector<bool>> ever_owned(tc.tp, std::vector<bool>(num_blocks, false));
  std::vector<int64_t> live_ids;
  auto record_owners = [&] {
    for (int64_t id : live_ids) {
      const SequenceBlockTables* t = kv.Tables(id);
      for (size_t h = 0; h < t->heads.size(); ++h) {
        for (int32_t block : t->heads[h].blocks) {
          ever_owned[tp.sharding().RankOfHeadIndex(static_cast<int32_t>(h))][block] = true;
        }
      }
    }
  };

  // Three sequences of different lengths, prefilled in one batch with window scores.
  std::mt19937 rng(17);
  std::vector<Seq> seqs;
  for (int len : {5, 23, 41}) {
    Seq s;
    s.id = static_cast<int64_t>(seqs.size()) + 1;
    for (int i = 0; i < len; ++i) s.tokens.push_back(static_cast<int32_t>(rng() % 103));
    ASSERT_TRUE(kv.AddSequence(s.id).ok());
    ASSERT_TRUE(kv.Append(s.id, len).ok());
    live_ids.push_back(s.id);
    seqs.push_back(std::move(s));
  }
  ForwardBatch prefill;
  for (const Seq& s : seqs) {
    ForwardSequence f;
    f.seq_id = s.id;
    f.tokens = s.tokens;
    f.tables = kv.Tables(s.id);
    f.score_queries = 8;
    f.score_pool = true;
    f.all_logits = s.id == 2;  // one sequence returns every row
    prefill.seqs.push_back(f);
  }
  std::vector<float> logits = ForwardBoth(ref, tp, prefill, bit_exact, &worst);
  record_owners();
  const int32_t vocab = ref.config().vocab_size;
  // Output rows: seq 1 one row, seq 2 all 23 rows, seq 3 one row.
  ASSERT_EQ(logits.size(), static_cast<size_t>(1 + 23 + 1) * vocab);
  const size_t last_row[] = {0, 23, 24};
  for (size_t i = 0; i < seqs.size(); ++i) {
    seqs[i].tokens.push_back(
        Argmax(std::span<const float>(logits.data() + last_row[i] * vocab, vocab)));
  }
  ExpectSlotsAgree(kv, seqs, ref, tp);

  int evictions = 0;
  for (int step = 0; step < 32; ++step) {
    if (step == 4 || step == 20) {
      // Compress every sequence by a third of its blocks: host planner over each executor's
      // reader, the distributed planner on the ranks, then one plan applied to both.
      for (const Seq& s : seqs) {
        const SequenceBlockTables* t = kv.Tables(s.id);
        int64_t blocks = 0;
        for (const HeadBlockTable& h : t->heads) blocks += static_cast<int64_t>(h.blocks.size());
        EvictionConstraints cons;
        cons.protected_window = 4;
        const int64_t num_tokens = static_cast<int64_t>(s.tokens.size()) - 1;
        auto plan_ref =
            PlanEviction(kv.layout(), *t, ref.slot_reader(), num_tokens, blocks / 3, cons);
        auto plan_tp =
            PlanEviction(kv.layout(), *t, tp.slot_reader(), num_tokens, blocks / 3, cons);
        auto plan_ranks = tp.PlanEvictionOnRanks(*t, num_tokens, blocks / 3, cons);
        ASSERT_TRUE(plan_ref.ok() && plan_tp.ok() && plan_ranks.ok());
        ASSERT_EQ(plan_ranks->heads.size(), plan_tp->heads.size());
        EXPECT_EQ(plan_ranks->blocks_freed, plan_tp->blocks_freed);
        for (size_t i = 0; i < plan_tp->heads.size(); ++i) {
          EXPECT_EQ(plan_ranks->heads[i].head_index, plan_tp->heads[i].head_index);
          EXPECT_EQ(plan_ranks->heads[i].evicted_slots, plan_tp->heads[i].evicted_slots);
          EXPECT_EQ(plan_ranks->heads[i].moves.size(), plan_tp->heads[i].moves.size());
        }
        ASSERT_EQ(plan_ref->heads.size(), plan_tp->heads.size());
        for (size_t i = 0; i < plan_tp->heads.size(); ++i) {
          EXPECT_EQ(plan_ref->heads[i].evicted_slots, plan_tp->heads[i].evicted_slots);
        }
        std::vector<KvMove> moves;
        ASSERT_TRUE(
            kv.ApplyEviction(s.id, *plan_ranks, CompressionTrigger::kInterval, &moves).ok());
        ASSERT_TRUE(ref.MoveKvs(moves).ok());
        ASSERT_TRUE(tp.MoveKvs(moves).ok());
        evictions += plan_ranks->blocks_freed > 0;
      }
      ASSERT_TRUE(kv.CheckInvariants().ok());
      ExpectSlotsAgree(kv, seqs, ref, tp);
    }
    ForwardBatch decode;
    for (const Seq& s : seqs) {
      ASSERT_TRUE(kv.Append(s.id, 1).ok());
      ForwardSequence f;
      f.seq_id = s.id;
      f.tokens = std::span<const int32_t>(s.tokens).subspan(s.tokens.size() - 1, 1);
      f.start_position = static_cast<int32_t>(s.tokens.size()) - 1;
      f.tables = kv.Tables(s.id);
      f.score_queries = 1;
      decode.seqs.push_back(f);
    }
    logits = ForwardBoth(ref, tp, decode, bit_exact, &worst);
    record_owners();
    if (HasFailure()) return;
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i].tokens.push_back(Argmax(std::span<const float>(logits.data() + i * vocab, vocab)));
    }
  }
  EXPECT_GE(evictions, 4);  // (a short sequence may have nothing evictable at block size 16)
  ExpectSlotsAgree(kv, seqs, ref, tp);
  // Each rank writes only blocks of its own heads: every other block of its pool is untouched.
  const int32_t b = tc.block_size, d = ref.layout().head_dim;
  for (int32_t r = 0; r < tc.tp; ++r) {
    std::span<const float> k = tp.k_cache(r);
    int64_t owned = 0;
    for (int32_t block = 0; block < num_blocks; ++block) {
      if (ever_owned[r][block]) {
        ++owned;
        continue;
      }
      for (int64_t i = static_cast<int64_t>(block) * b * d; i < (block + 1LL) * b * d; ++i) {
        ASSERT_EQ(k[i], 0.0f) << "rank " << r << " wrote block " << block;
      }
    }
    EXPECT_GT(owned, 0);
    EXPECT_LT(owned, num_blocks / 2);
  }
  std::ostringstream worst_text;
  worst_text << std::scientific << worst;
  RecordProperty("max_rel_logit_error", worst_text.str());
  if (!bit_exact) {
    EXPECT_GT(worst, 0.0);  // the reduction order really differs
  }
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  static const char* const kNames[] = {"Llama", "LlamaBiasesTied", "Qwen2Tied"};
  return std::string(kNames[static_cast<int>(info.param.variant)]) + "_TP" +
         std::to_string(info.param.tp) + "_B" + std::to_string(info.param.block_size);
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << "variant " << static_cast<int>(c.variant) << ", TP " << c.tp << ", block size "
      << c.block_size;
}

INSTANTIATE_TEST_SUITE_P(Models, TpExecutorParityTest,
                         ::testing::Values(Case{Variant::kLlama, 1, 4}, Case{Variant::kLlama, 2, 4},
                                           Case{Variant::kLlama, 4, 4},
                                           Case{Variant::kLlamaBiasesTied, 2, 8},
                                           Case{Variant::kLlamaBiasesTied, 4, 3},
                                           Case{Variant::kQwen2Tied, 2, 16},
                                           Case{Variant::kQwen2Tied, 4, 4}),
                         CaseName);

TEST(TpExecutorTest, CreateRequiresWholeKvHeadsPerRank) {
  auto w = Weights(Variant::kLlama);
  auto three = TensorParallelCpuExecutor::Create(w, 64, 4, 3);
  ASSERT_FALSE(three.ok());
  EXPECT_EQ(three.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(three.status().message(), HasSubstr("num_key_value_heads"));
  EXPECT_EQ(TensorParallelCpuExecutor::Create(w, 64, 4, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TensorParallelCpuExecutor::Create(w, 64, 4, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(TensorParallelCpuExecutor::Create(w, 0, 4, 2).status().message(),
              HasSubstr("num_blocks"));
  EXPECT_THAT(TensorParallelCpuExecutor::Create(w, 64, 0, 2).status().message(),
              HasSubstr("block_size"));
  EXPECT_EQ(TensorParallelCpuExecutor::Create(nullptr, 64, 4, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TensorParallelCpuExecutor::KvBytesPerBlock(w->config, 16, 2), 2 * 16 * (2 * 8 * 4 + 8));
}

TEST(TpExecutorTest, BadBatchesAndMovesFailCleanlyAndTheExecutorKeepsWorking) {
  auto w = Weights(Variant::kLlama);
  auto tp_or = TensorParallelCpuExecutor::Create(w, 256, 4, 2);
  ASSERT_TRUE(tp_or.ok()) << tp_or.status();
  TensorParallelCpuExecutor& tp = **tp_or;
  KvManagerOptions ko;
  ko.layout = tp.layout();
  KvManager kv(ko);
  std::vector<int32_t> tokens = {5, 9, 200};  // 200 is outside the vocabulary
  ASSERT_TRUE(kv.AddSequence(1).ok());
  ASSERT_TRUE(kv.Append(1, 3).ok());
  ForwardBatch batch;
  ForwardSequence f;
  f.seq_id = 1;
  f.tokens = tokens;
  f.tables = kv.Tables(1);
  batch.seqs.push_back(f);
  ForwardOutput out;
  absl::Status st = tp.Forward(batch, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("vocabulary"));
  EXPECT_EQ(tp.Forward(batch, nullptr).code(), absl::StatusCode::kInvalidArgument);

  tokens[2] = 7;
  ASSERT_TRUE(tp.Forward(batch, &out).ok());
  ASSERT_EQ(out.logits.size(), static_cast<size_t>(w->config.vocab_size));
  const SequenceBlockTables& t = *kv.Tables(1);
  // Head index 0 (rank 0) and head index 2 (kv head 2: rank 1).
  const int32_t b0 = t.heads[0].blocks[0], b2 = t.heads[2].blocks[0];
  EXPECT_EQ(tp.OwnerOfBlock(b0), 0);
  EXPECT_EQ(tp.OwnerOfBlock(b2), 1);
  const float pos_before = tp.slot_reader().Position(b0, 0);
  auto move = [](int32_t sb, int32_t so, int32_t db, int32_t dof) {
    KvMove m;
    m.src_block = sb;
    m.src_offset = so;
    m.dst_block = db;
    m.dst_offset = dof;
    return m;
  };
  // Across ranks, from a block nobody wrote, out of range: all refused, nothing moved (the
  // valid first move of each list must not have run either).
  std::vector<KvMove> cross = {move(b0, 2, b0, 0), move(b0, 1, b2, 0)};
  st = tp.MoveKvs(cross);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("rank"));
  EXPECT_EQ(tp.slot_reader().Position(b0, 0), pos_before);
  int32_t unwritten = 0;
  while (tp.OwnerOfBlock(unwritten) >= 0) ++unwritten;
  EXPECT_THAT(
      tp.MoveKvs(std::vector<KvMove>{move(b0, 2, b0, 0), move(unwritten, 0, b0, 1)}).message(),
      HasSubstr("no KV"));
  EXPECT_EQ(tp.MoveKvs(std::vector<KvMove>{move(b0, 4, b0, 0)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tp.MoveKvs(std::vector<KvMove>{move(-1, 0, b0, 0)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tp.slot_reader().Position(b0, 0), pos_before);
  // A valid move on rank 1's storage.
  ASSERT_TRUE(tp.MoveKvs(std::vector<KvMove>{move(b2, 2, b2, 0)}).ok());
  EXPECT_EQ(tp.slot_reader().Position(b2, 0), 2);
  EXPECT_EQ(tp.positions(1)[static_cast<size_t>(b2) * 4], 2);

  // The executor still runs after the errors.
  std::vector<int32_t> next = {11};
  ASSERT_TRUE(kv.Append(1, 1).ok());
  ForwardBatch decode;
  f.tokens = next;
  f.start_position = 3;
  f.tables = kv.Tables(1);
  decode.seqs.push_back(f);
  EXPECT_TRUE(tp.Forward(decode, &out).ok());
}

}  // namespace
}  // namespace kvc
