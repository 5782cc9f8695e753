// Engine + KV-Compress: triggers (after prefill, continual, memory pressure before preemption),
// the anti-thrash rule, usage reporting, and regression tests for the published fork's bugs
// (reference/kvcompress-spec.md §7.3): metadata and blocks released on every path that ends or
// preempts a sequence, budgets from server defaults really applied, sequences under budget at
// their first evaluation still compressed later.
#include <random>

#include "gtest/gtest.h"
#include "model/config.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"

namespace kvc {
namespace {

constexpr char kConfig[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"})";

std::shared_ptr<const ModelWeights> TestWeights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto cfg = ModelConfig::FromJsonString(kConfig, "engine-compression-test");
    auto weights = ModelWeights::Random(*cfg, 5);
    return std::make_shared<const ModelWeights>(std::move(*weights));
  }();
  return w;
}

std::unique_ptr<Engine> MakeEngine(int64_t num_blocks, int32_t block_size,
                                   EngineOptions opts = {}) {
  auto ex = CpuExecutor::Create(TestWeights(), num_blocks, block_size);
  EXPECT_TRUE(ex.ok()) << ex.status();
  KvManagerOptions ko;
  ko.layout = (*ex)->layout();
  auto kv = KvManager::Create(ko);
  opts.check_invariants = true;  // CheckInvariants() after every step
  return std::make_unique<Engine>(std::move(*ex), std::move(*kv), opts, nullptr);
}

struct Collected {
  std::vector<int32_t> tokens;
  std::optional<EngineOutput> final_out;
};

OutputCallback Into(Collected* c) {
  return [c](EngineOutput o) {
    c->tokens.insert(c->tokens.end(), o.tokens.begin(), o.tokens.end());
    if (o.finished) c->final_out = std::move(o);
  };
}

EngineRequest Compressed(const std::string& id, int prompt_len, int max_tokens, double rate,
                         uint32_t seed = 1) {
  EngineRequest r;
  r.request_id = id;
  std::mt19937 rng(seed);
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(3 + rng() % 90);
  r.sampling.temperature = 0;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.policy = CompressionPolicyKind::kKvCompress;
  r.compression.mode = BudgetMode::kRate;
  r.compression.compression_rate = rate;
  r.compression.constraints.protected_window = 8;
  r.observation_window = 8;
  return r;
}

void RunAll(Engine* e) {
  for (int i = 0; i < 100000 && e->StepForTest(); ++i) {
  }
}

TEST(EngineCompressionTest, CompressesAfterPrefillAndReportsTheRatio) {
  auto e = MakeEngine(4096, 8);
  Collected c;
  ASSERT_TRUE(e->Submit(Compressed("a", 200, 10, 8.0), Into(&c)).ok());
  e->StepForTest();  // prefill + compression in the same step
  const auto stats = e->kv_manager().Stats(false);
  EXPECT_LT(stats.kvs_held, stats.kvs_uncompressed / 4);
  EXPECT_EQ(stats.compressions_by_trigger.at("prefill"), 1);
  RunAll(e.get());
  ASSERT_TRUE(c.final_out.has_value());
  EXPECT_EQ(c.tokens.size(), 10u);
  EXPECT_GT(c.final_out->usage.compression_ratio, 4.0);
  EXPECT_LT(c.final_out->usage.kvs_held, c.final_out->usage.kvs_uncompressed);
  EXPECT_GE(c.final_out->usage.compressions, 1);
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 4096);
}

TEST(EngineCompressionTest, PolicyNoneAndRateOneNeverEvict) {
  auto e = MakeEngine(4096, 8);
  Collected a, b;
  auto r1 = Compressed("a", 100, 20, 8.0);
  r1.policy = CompressionPolicyKind::kNone;
  auto r2 = Compressed("b", 100, 20, 1.0);
  ASSERT_TRUE(e->Submit(r1, Into(&a)).ok());
  ASSERT_TRUE(e->Submit(r2, Into(&b)).ok());
  RunAll(e.get());
  EXPECT_DOUBLE_EQ(a.final_out->usage.compression_ratio, 1.0);
  EXPECT_DOUBLE_EQ(b.final_out->usage.compression_ratio, 1.0);
  EXPECT_EQ(e->kv_manager().Stats(false).evicted_kvs_total, 0);
}

// Fork bug (§7.3): with compress_once, a sequence evaluated while under budget was never
// compressed later. Here a short prompt is under budget at prefill and must be compressed once
// its decode growth takes it over the budget.
TEST(EngineCompressionTest, SequenceUnderBudgetAtPrefillIsCompressedWhenItGrows) {
  auto e = MakeEngine(4096, 8);
  Collected c;
  EngineRequest r = Compressed("grow", 10, 150, 4.0);
  r.compression.mode = BudgetMode::kMaxCacheTokens;
  r.compression.max_cache_tokens = 32;
  ASSERT_TRUE(e->Submit(r, Into(&c)).ok());
  e->StepForTest();
  EXPECT_EQ(e->kv_manager().Stats(false).evicted_kvs_total, 0) << "under budget at prefill";
  RunAll(e.get());
  const auto stats = e->kv_manager().Stats(false);
  EXPECT_GT(stats.evicted_kvs_total, 0);
  EXPECT_GT(stats.compressions_by_trigger.at("continual"), 1);
  // 160 tokens at a 32-KV-per-head budget (+ one block of decode growth per head).
  EXPECT_LE(c.final_out->usage.kvs_held, (32 + 8) * 4);
  EXPECT_EQ(c.tokens.size(), 150u);
}

// Memory pressure compresses over-budget sequences before anything is preempted (continual
// compression off: sequences grow past their budget until memory runs short).
TEST(EngineCompressionTest, CompressesBeforePreemptingUnderMemoryPressure) {
  auto e = MakeEngine(200, 8);
  std::vector<Collected> got(4);
  for (int i = 0; i < 4; ++i) {
    EngineRequest r = Compressed("p" + std::to_string(i), 60, 120, 4.0, 10 + i);
    r.continual = false;
    ASSERT_TRUE(e->Submit(r, Into(&got[i])).ok());
  }
  RunAll(e.get());
  const auto stats = e->kv_manager().Stats(false);
  EXPECT_GT(stats.compressions_by_trigger.count("memory_pressure"), 0u);
  int preemptions = 0;
  for (auto& g : got) {
    ASSERT_TRUE(g.final_out.has_value());
    EXPECT_TRUE(g.final_out->status.ok()) << g.final_out->status;
    EXPECT_EQ(g.tokens.size(), 120u);
    preemptions += g.final_out->usage.preemptions;
  }
  // Four sequences of 180 tokens need 4 * 23 * 4 = 368 blocks uncompressed, and 4 * 18 * 4 = 288
  // even after their prefill compression: growth runs the 200-block pool short, and compressing
  // back to budget (~21 + growth KVs per head) must be enough that nothing is preempted.
  EXPECT_EQ(preemptions, 0);
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 200);
}

// Fork bug (§7.3): preemption by recompute freed blocks but kept stale metadata. Here sequences
// are preempted in the middle of compressing (pool far too small), aborted mid-flight, and
// invariants are checked after every step; every block comes back and the survivors finish.
TEST(EngineCompressionTest, PreemptionAndAbortInTheMiddleOfCompressionReleaseEverything) {
  // No pressure headroom: compressing exactly to the budget leaves growth nowhere to go, so
  // sequences are preempted while others are being compressed.
  EngineOptions opts;
  opts.pressure_headroom_tokens = 0;
  auto e = MakeEngine(160, 8, opts);
  std::vector<Collected> got(6);
  for (int i = 0; i < 6; ++i) {
    EngineRequest r = Compressed("q" + std::to_string(i), 50 + 10 * i, 80, 2.0, 20 + i);
    r.continual = i % 2 == 0;
    ASSERT_TRUE(e->Submit(r, Into(&got[i])).ok());
  }
  for (int s = 0; s < 30; ++s) e->StepForTest();
  EXPECT_TRUE(e->Abort("q1"));
  EXPECT_TRUE(e->Abort("q4"));
  RunAll(e.get());
  int preemptions = 0;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(got[i].final_out.has_value()) << i;
    if (i == 1 || i == 4) {
      EXPECT_EQ(got[i].final_out->reason, FinishReason::kAbort);
    } else {
      EXPECT_EQ(got[i].tokens.size(), 80u) << i;
    }
    preemptions += got[i].final_out->usage.preemptions;
  }
  EXPECT_GT(preemptions, 0) << "the pool was meant to force preemption";
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 160);
  EXPECT_EQ(e->kv_manager().num_sequences(), 0);
  EXPECT_TRUE(e->kv_manager().CheckInvariants().ok());
}

// A request whose uncompressed growth would never fit is admitted when it compresses.
TEST(EngineCompressionTest, CompressedRequestsMayOutgrowThePoolUncompressed) {
  auto e = MakeEngine(120, 8);
  Collected c;
  EngineRequest plain = Compressed("plain", 100, 200, 1.0);
  plain.policy = CompressionPolicyKind::kNone;
  EXPECT_EQ(e->Submit(plain, Into(&c)).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(e->Submit(Compressed("ok", 100, 200, 8.0), Into(&c)).ok());
  RunAll(e.get());
  EXPECT_EQ(c.tokens.size(), 200u);
  EXPECT_TRUE(c.final_out->status.ok());
}

TEST(EngineCompressionTest, EveryPolicyRunsToCompletion) {
  for (auto p : {CompressionPolicyKind::kKvCompress, CompressionPolicyKind::kSnapKv,
                 CompressionPolicyKind::kPyramidKv, CompressionPolicyKind::kStreaming,
                 CompressionPolicyKind::kRandom}) {
    auto e = MakeEngine(2048, 8);
    Collected c;
    EngineRequest r = Compressed("x", 120, 30, 4.0);
    r.policy = p;
    ASSERT_TRUE(e->Submit(r, Into(&c)).ok());
    RunAll(e.get());
    ASSERT_TRUE(c.final_out.has_value());
    EXPECT_EQ(c.tokens.size(), 30u) << CompressionPolicyName(p);
    EXPECT_GT(c.final_out->usage.compression_ratio, 2.0) << CompressionPolicyName(p);
    EXPECT_EQ(e->kv_manager().num_free_blocks(), 2048);
  }
}

// Under memory pressure a decoding sequence outgrows a rate budget every step; compressing it
// exactly to the budget recompresses it every step. The headroom evicts the growth of the next
// steps too: far fewer compressions, no preemption, same number of tokens.
TEST(EngineCompressionTest, PressureHeadroomAvoidsRecompressingEveryStep) {
  auto run = [](int32_t headroom, int64_t* compressions, int64_t* preemptions) {
    EngineOptions opts;
    opts.pressure_headroom_tokens = headroom;
    auto e = MakeEngine(200, 8, opts);
    std::vector<Collected> got(6);
    for (int i = 0; i < 6; ++i) {
      EngineRequest r = Compressed("h" + std::to_string(i), 60, 160, 2.0, 40 + i);
      r.continual = false;  // compress after prefill and under memory pressure only
      ASSERT_TRUE(e->Submit(r, Into(&got[i])).ok());
    }
    RunAll(e.get());
    *compressions = 0;
    *preemptions = 0;
    for (const Collected& c : got) {
      ASSERT_TRUE(c.final_out.has_value());
      EXPECT_EQ(c.tokens.size(), 160u);
      *compressions += c.final_out->usage.compressions;
      *preemptions += c.final_out->usage.preemptions;
    }
    EXPECT_EQ(e->kv_manager().num_free_blocks(), 200);
  };
  int64_t exact_c = 0, exact_p = 0, slack_c = 0, slack_p = 0;
  run(0, &exact_c, &exact_p);
  run(32, &slack_c, &slack_p);
  EXPECT_GT(exact_c, 8) << "the pool was meant to put the sequences under memory pressure";
  EXPECT_LT(slack_c * 2, exact_c) << "headroom " << slack_c << " vs exact " << exact_c;
  EXPECT_LE(slack_p, exact_p);
}

}  // namespace
}  // namespace kvc
