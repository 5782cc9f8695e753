// The engine on the tensor-parallel CPU executor: with KV-Compress (kvcompress, rate 4, continual
// compression) and several requests of different lengths, TP = 2 and TP = 4 generate the same
// greedy tokens as TP = 1 (the CpuExecutor), and after EVERY engine step the KV manager holds the
// same number of KVs in every (layer, kv_head): the compression decisions made from the ranks'
// scores (read through slot_reader()) are the single-rank decisions.
#include <map>
#include <optional>
#include <random>

#include "gtest/gtest.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"
#include "worker/tp_cpu_executor.h"

namespace kvc {
namespace {

std::shared_ptr<const ModelWeights> TestWeights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    ModelConfig c;
    c.name = "tp-engine-test";
    c.vocab_size = 97;
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 4;
    c.head_dim = 8;
    c.max_position_embeddings = 1024;
    c.rms_norm_eps = 1e-5f;
    c.eos_token_ids = {2};
    auto weights = ModelWeights::Random(c, 5);
    EXPECT_TRUE(weights.ok()) << weights.status();
    return std::make_shared<const ModelWeights>(std::move(*weights));
  }();
  return w;
}

std::unique_ptr<Engine> MakeEngine(int32_t tp, int64_t num_blocks, int32_t block_size,
                                   std::shared_ptr<const ModelWeights> weights = TestWeights()) {
  std::unique_ptr<Executor> ex;
  if (tp == 1) {
    auto e = CpuExecutor::Create(weights, num_blocks, block_size);
    EXPECT_TRUE(e.ok()) << e.status();
    ex = std::move(*e);
  } else {
    auto e = TensorParallelCpuExecutor::Create(weights, num_blocks, block_size, tp);
    EXPECT_TRUE(e.ok()) << e.status();
    ex = std::move(*e);
  }
  KvManagerOptions ko;
  ko.layout = ex->layout();
  auto kv = KvManager::Create(ko);
  EXPECT_TRUE(kv.ok()) << kv.status();
  EngineOptions opts;
  opts.check_invariants = true;
  return std::make_unique<Engine>(std::move(ex), std::move(*kv), opts, nullptr);
}

struct Collected {
  std::vector<int32_t> tokens;
  std::optional<EngineOutput> final_out;
};

EngineRequest Compressed(const std::string& id, int prompt_len, int max_tokens, uint32_t seed,
                         int32_t vocab = 93) {
  EngineRequest r;
  r.request_id = id;
  std::mt19937 rng(seed);
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(3 + rng() % (vocab - 3));
  r.sampling.temperature = 0;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.policy = CompressionPolicyKind::kKvCompress;
  r.compression.mode = BudgetMode::kRate;
  r.compression.compression_rate = 4.0;
  r.compression.constraints.protected_window = 8;
  r.observation_window = 8;
  return r;
}

// Per (layer, kv_head) KVs held over all sequences.
std::vector<int64_t> HeadKvs(const Engine& e) {
  std::vector<int64_t> out;
  for (const LayerOccupancy& l : e.kv_manager().Stats(/*include_heads=*/true).layers) {
    out.insert(out.end(), l.head_kvs.begin(), l.head_kvs.end());
  }
  return out;
}

class TpEngineTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(TpEngineTest, CompressedGenerationMatchesTensorParallelOne) {
  const int32_t tp = GetParam();
  auto ref = MakeEngine(1, 4096, 8);
  auto par = MakeEngine(tp, 4096, 8);
  const int lens[] = {150, 37, 90, 260};
  std::map<std::string, Collected> got_ref, got_par;
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    auto req = Compressed(id, lens[i], 24, 100 + i);
    ASSERT_TRUE(ref->Submit(req,
                            [&got_ref, id](EngineOutput o) {
                              auto& c = got_ref[id];
                              c.tokens.insert(c.tokens.end(), o.tokens.begin(), o.tokens.end());
                              if (o.finished) c.final_out = std::move(o);
                            })
                    .ok());
    ASSERT_TRUE(par->Submit(req,
                            [&got_par, id](EngineOutput o) {
                              auto& c = got_par[id];
                              c.tokens.insert(c.tokens.end(), o.tokens.begin(), o.tokens.end());
                              if (o.finished) c.final_out = std::move(o);
                            })
                    .ok());
  }
  int steps = 0, compared_nonzero = 0;
  while (true) {
    const bool a = ref->StepForTest();
    const bool b = par->StepForTest();
    ASSERT_EQ(a, b) << "step " << steps;
    if (!a) break;
    ++steps;
    const std::vector<int64_t> ha = HeadKvs(*ref), hb = HeadKvs(*par);
    ASSERT_EQ(ha, hb) << "per-head KV counts differ after step " << steps;
    compared_nonzero += std::any_of(ha.begin(), ha.end(), [](int64_t v) { return v > 0; });
    ASSERT_EQ(ref->kv_manager().num_free_blocks(), par->kv_manager().num_free_blocks());
  }
  EXPECT_GE(steps, 24);
  EXPECT_GE(compared_nonzero, 20);
  for (int i = 0; i < 4; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(got_ref[id].final_out.has_value());
    ASSERT_TRUE(got_par[id].final_out.has_value());
    EXPECT_EQ(got_par[id].tokens, got_ref[id].tokens) << id;
    EXPECT_EQ(got_ref[id].tokens.size(), 24u);
    const EngineUsage& ua = got_ref[id].final_out->usage;
    const EngineUsage& ub = got_par[id].final_out->usage;
    EXPECT_EQ(ub.kvs_held, ua.kvs_held) << id;
    EXPECT_EQ(ub.kvs_uncompressed, ua.kvs_uncompressed) << id;
    EXPECT_EQ(ub.compressions, ua.compressions) << id;
    EXPECT_GT(ua.compression_ratio, 2.0) << id;  // compression really happened (rate 4, P = 8)
  }
  const KvStats sa = ref->kv_manager().Stats(false), sb = par->kv_manager().Stats(false);
  EXPECT_GT(sa.evicted_kvs_total, 0);
  EXPECT_EQ(sb.evicted_kvs_total, sa.evicted_kvs_total);
  EXPECT_EQ(sb.moved_kvs_total, sa.moved_kvs_total);
  EXPECT_EQ(par->kv_manager().num_free_blocks(), 4096);
}

INSTANTIATE_TEST_SUITE_P(Ranks, TpEngineTest, ::testing::Values(2, 4));

// The trained reference model (models/kvc-ref: 2 KV heads, so TP = 2), whose peaked
// distributions and structured attention are closer to serving than random weights.
TEST(TpEngineReferenceModelTest, TrainedModelAtTensorParallelTwoMatchesOne) {
  auto weights = LoadModel("models/kvc-ref");
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_EQ((*weights)->config.num_key_value_heads % 2, 0);
  auto ref = MakeEngine(1, 2048, 16, *weights);
  auto par = MakeEngine(2, 2048, 16, *weights);
  const int32_t vocab = (*weights)->config.vocab_size;
  std::vector<Collected> got_ref(3), got_par(3);
  const int lens[] = {300, 120, 45};
  for (int i = 0; i < 3; ++i) {
    auto req = Compressed("m" + std::to_string(i), lens[i], 32, 7 + i, vocab);
    ASSERT_TRUE(ref->Submit(req,
                            [&got_ref, i](EngineOutput o) {
                              got_ref[i].tokens.insert(got_ref[i].tokens.end(), o.tokens.begin(),
                                                       o.tokens.end());
                              if (o.finished) got_ref[i].final_out = std::move(o);
                            })
                    .ok());
    ASSERT_TRUE(par->Submit(req,
                            [&got_par, i](EngineOutput o) {
                              got_par[i].tokens.insert(got_par[i].tokens.end(), o.tokens.begin(),
                                                       o.tokens.end());
                              if (o.finished) got_par[i].final_out = std::move(o);
                            })
                    .ok());
  }
  int steps = 0;
  while (true) {
    const bool a = ref->StepForTest();
    ASSERT_EQ(par->StepForTest(), a);
    if (!a) break;
    ++steps;
    ASSERT_EQ(HeadKvs(*par), HeadKvs(*ref)) << "per-head KV counts differ after step " << steps;
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(got_ref[i].final_out.has_value() && got_par[i].final_out.has_value());
    EXPECT_EQ(got_ref[i].tokens.size(), 32u);
    EXPECT_EQ(got_par[i].tokens, got_ref[i].tokens) << "request " << i;
    EXPECT_EQ(got_par[i].final_out->usage.kvs_held, got_ref[i].final_out->usage.kvs_held);
    EXPECT_GT(got_ref[i].final_out->usage.compression_ratio, 1.5) << "request " << i;
  }
}

}  // namespace
}  // namespace kvc
