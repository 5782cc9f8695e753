// Engine: continuous batching, admission, preemption by recompute, aborts, finish conditions.
// Runs a small random-weight Llama on the CPU executor; greedy decoding makes outputs
// deterministic, so every scheduling path must reproduce a request's solo output exactly.
#include "worker/engine.h"

#include <map>
#include <random>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "model/config.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"

namespace kvc {
namespace {

constexpr char kConfig[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"})";

std::shared_ptr<const ModelWeights> TestWeights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto cfg = ModelConfig::FromJsonString(kConfig, "engine-test");
    EXPECT_TRUE(cfg.ok()) << cfg.status();
    auto weights = ModelWeights::Random(*cfg, 42);
    EXPECT_TRUE(weights.ok()) << weights.status();
    return std::make_shared<const ModelWeights>(std::move(*weights));
  }();
  return w;
}

std::unique_ptr<Engine> MakeEngine(int64_t num_blocks, int32_t block_size, EngineOptions opts,
                                   MetricsRegistry* metrics = nullptr) {
  auto ex = CpuExecutor::Create(TestWeights(), num_blocks, block_size);
  EXPECT_TRUE(ex.ok()) << ex.status();
  KvManagerOptions ko;
  ko.layout = (*ex)->layout();
  auto kv = KvManager::Create(ko);
  EXPECT_TRUE(kv.ok()) << kv.status();
  opts.check_invariants = true;
  return std::make_unique<Engine>(std::move(*ex), std::move(*kv), opts, metrics);
}

struct Collected {
  std::vector<int32_t> tokens;
  std::optional<EngineOutput> final_out;
  int finals = 0;
};

EngineRequest Greedy(const std::string& id, std::vector<int32_t> prompt, int max_tokens) {
  EngineRequest r;
  r.request_id = id;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  return r;
}

OutputCallback Into(Collected* c) {
  return [c](EngineOutput o) {
    c->tokens.insert(c->tokens.end(), o.tokens.begin(), o.tokens.end());
    if (o.finished) {
      c->finals++;
      c->final_out = std::move(o);
    }
  };
}

std::vector<int32_t> RandomPrompt(std::mt19937* rng, int len) {
  std::vector<int32_t> p(len);
  for (auto& t : p) t = 3 + (*rng)() % 90;
  return p;
}

void RunToCompletion(Engine* e, int max_steps = 10000) {
  for (int i = 0; i < max_steps && e->StepForTest(); ++i) {
  }
}

std::vector<int32_t> Solo(const std::vector<int32_t>& prompt, int max_tokens) {
  auto e = MakeEngine(4096, 16, {});
  Collected c;
  EXPECT_TRUE(e->Submit(Greedy("solo", prompt, max_tokens), Into(&c)).ok());
  RunToCompletion(e.get());
  EXPECT_EQ(c.finals, 1);
  return c.tokens;
}

TEST(EngineTest, SingleRequestRunsToMaxTokensAndFreesItsBlocks) {
  auto e = MakeEngine(512, 16, {});
  Collected c;
  ASSERT_TRUE(e->Submit(Greedy("a", {5, 6, 7, 8, 9}, 12), Into(&c)).ok());
  RunToCompletion(e.get());
  ASSERT_EQ(c.finals, 1);
  EXPECT_EQ(c.tokens.size(), 12u);
  EXPECT_EQ(c.final_out->reason, FinishReason::kLength);
  EXPECT_EQ(c.final_out->usage.prompt_tokens, 5);
  EXPECT_EQ(c.final_out->usage.completion_tokens, 12);
  // 5 prompt + 11 fed-back tokens hold KVs, in 2 layers x 2 kv heads.
  EXPECT_EQ(c.final_out->usage.kvs_uncompressed, 16 * 4);
  EXPECT_EQ(c.final_out->usage.kvs_held, 16 * 4);
  EXPECT_DOUBLE_EQ(c.final_out->usage.compression_ratio, 1.0);
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 512);
  EXPECT_TRUE(e->kv_manager().CheckInvariants().ok());
}

TEST(EngineTest, ContinuousBatchingReproducesSoloOutputs) {
  std::mt19937 rng(1);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(RandomPrompt(&rng, 1 + rng() % 40));
  std::vector<std::vector<int32_t>> solo;
  for (const auto& p : prompts) solo.push_back(Solo(p, 20));

  auto e = MakeEngine(4096, 16, {});
  std::vector<Collected> got(prompts.size());
  // Requests join the running batch between steps: two now, then one more every step.
  size_t next = 0;
  for (; next < 2; ++next) {
    ASSERT_TRUE(
        e->Submit(Greedy("r" + std::to_string(next), prompts[next], 20), Into(&got[next])).ok());
  }
  int steps = 0;
  while (e->StepForTest() || next < prompts.size()) {
    if (next < prompts.size()) {
      ASSERT_TRUE(
          e->Submit(Greedy("r" + std::to_string(next), prompts[next], 20), Into(&got[next])).ok());
      ++next;
    }
    ASSERT_LT(++steps, 1000);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i].finals, 1);
    EXPECT_EQ(got[i].tokens, solo[i]) << "request " << i;
  }
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 4096);
}

TEST(EngineTest, PreemptionByRecomputeReproducesSoloOutputs) {
  std::mt19937 rng(2);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(RandomPrompt(&rng, 10 + rng() % 20));
  std::vector<std::vector<int32_t>> solo;
  for (const auto& p : prompts) solo.push_back(Solo(p, 40));
  // Each sequence grows to <= 70 tokens = 9 blocks of 8 per head, 4 heads: 36 blocks. A pool of
  // 80 blocks holds two at full length, so the six must preempt and recompute.
  MetricsRegistry metrics;
  auto e = MakeEngine(80, 8, {}, &metrics);
  std::vector<Collected> got(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(e->Submit(Greedy("p" + std::to_string(i), prompts[i], 40), Into(&got[i])).ok());
  }
  RunToCompletion(e.get());
  int preemptions = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i].finals, 1);
    EXPECT_EQ(got[i].tokens, solo[i]) << "request " << i;
    preemptions += got[i].final_out->usage.preemptions;
  }
  EXPECT_GT(preemptions, 0) << "the pool was meant to be too small to avoid preemption";
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 80);
  EXPECT_EQ(e->kv_manager().Stats(false).preemptions_total, preemptions);
}

TEST(EngineTest, AbortReturnsEveryBlockAndFinishesOnce) {
  auto e = MakeEngine(256, 16, {});
  Collected a, b;
  ASSERT_TRUE(e->Submit(Greedy("a", {3, 4, 5, 6}, 100), Into(&a)).ok());
  ASSERT_TRUE(e->Submit(Greedy("b", {7, 8, 9}, 10), Into(&b)).ok());
  for (int i = 0; i < 3; ++i) e->StepForTest();
  EXPECT_LT(e->kv_manager().num_free_blocks(), 256);
  EXPECT_TRUE(e->Abort("a"));
  RunToCompletion(e.get());
  EXPECT_EQ(a.finals, 1);
  EXPECT_EQ(a.final_out->reason, FinishReason::kAbort);
  EXPECT_EQ(b.finals, 1);
  EXPECT_EQ(b.final_out->reason, FinishReason::kLength);
  EXPECT_EQ(b.tokens.size(), 10u);  // the other request is untouched
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 256);
  EXPECT_FALSE(e->Abort("a"));  // already finished
}

TEST(EngineTest, AbortOfAWaitingRequest) {
  EngineOptions o;
  o.max_num_seqs = 1;
  auto e = MakeEngine(256, 16, o);
  Collected a, b;
  ASSERT_TRUE(e->Submit(Greedy("a", {3, 4}, 5), Into(&a)).ok());
  ASSERT_TRUE(e->Submit(Greedy("b", {5, 6}, 5), Into(&b)).ok());
  e->StepForTest();
  EXPECT_EQ(e->num_waiting(), 1);
  EXPECT_TRUE(e->Abort("b"));
  RunToCompletion(e.get());
  EXPECT_EQ(b.final_out->reason, FinishReason::kAbort);
  EXPECT_TRUE(b.tokens.empty());
  EXPECT_EQ(a.tokens.size(), 5u);
}

TEST(EngineTest, StopTokenIdsAndEos) {
  auto e = MakeEngine(256, 16, {});
  std::vector<int32_t> prompt = {10, 11, 12};
  std::vector<int32_t> solo = Solo(prompt, 8);
  EngineRequest r = Greedy("s", prompt, 8);
  r.stop_token_ids = {solo[3]};
  Collected c;
  ASSERT_TRUE(e->Submit(r, Into(&c)).ok());
  RunToCompletion(e.get());
  EXPECT_EQ(c.final_out->reason, FinishReason::kStop);
  // Stops at the first occurrence of that id (which may be earlier than position 3).
  auto it = std::find(solo.begin(), solo.end(), solo[3]);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(solo.begin(), it + 1));

  // EOS (config's eos_token_id = 2) ends a request unless ignore_eos.
  EngineRequest eos_req = Greedy("e", prompt, 8);
  eos_req.ignore_eos = false;
  eos_req.sampling.temperature = 1;
  eos_req.seed = 3;
  Collected d;
  ASSERT_TRUE(e->Submit(eos_req, Into(&d)).ok());
  RunToCompletion(e.get());
  ASSERT_EQ(d.finals, 1);
  if (d.final_out->reason == FinishReason::kEos) {
    EXPECT_EQ(d.tokens.back(), 2);
  } else {
    EXPECT_EQ(std::count(d.tokens.begin(), d.tokens.end(), 2), 0);
  }
}

TEST(EngineTest, SeededSamplingIsReproducible) {
  auto run = [](uint64_t seed) {
    auto e = MakeEngine(256, 16, {});
    EngineRequest r = Greedy("x", {20, 21, 22}, 16);
    r.sampling.temperature = 1.0;
    r.seed = seed;
    Collected c;
    EXPECT_TRUE(e->Submit(r, Into(&c)).ok());
    RunToCompletion(e.get());
    return c.tokens;
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

TEST(EngineTest, RejectsBadRequestsAtOnce) {
  auto e = MakeEngine(16, 16, {});  // 16 blocks, 4 heads: 4 blocks per head = 64 tokens
  Collected c;
  EXPECT_EQ(e->Submit(Greedy("a", {}, 5), Into(&c)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Submit(Greedy("a", {1, 500}, 5), Into(&c)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Submit(Greedy("a", {1, 2}, 0), Into(&c)).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> long_prompt(100, 5);
  absl::Status st = e->Submit(Greedy("a", long_prompt, 5), Into(&c));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("never fit"), absl::string_view::npos) << st;
  std::vector<int32_t> ctx_prompt(256, 5);
  EXPECT_EQ(e->Submit(Greedy("a", ctx_prompt, 5), Into(&c)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(e->Submit(Greedy("dup", {1, 2}, 2), Into(&c)).ok());
  EXPECT_EQ(e->Submit(Greedy("dup", {1, 2}, 2), Into(&c)).code(), absl::StatusCode::kAlreadyExists);
  RunToCompletion(e.get());
  EXPECT_EQ(c.finals, 1);  // rejected submissions never call back
}

TEST(EngineTest, ThreadedSubmitFromManyThreads) {
  auto e = MakeEngine(2048, 16, {});
  e->Start();
  constexpr int kThreads = 6;
  std::vector<Collected> got(kThreads);
  std::vector<absl::Notification> done(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      EngineRequest r = Greedy("t" + std::to_string(t), {3, 4, 5, static_cast<int32_t>(t + 6)}, 10);
      ASSERT_TRUE(e->Submit(r, [&, t](EngineOutput o) {
                     got[t].tokens.insert(got[t].tokens.end(), o.tokens.begin(), o.tokens.end());
                     if (o.finished) done[t].Notify();
                   }).ok());
    });
  }
  for (auto& t : ts) t.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(done[t].WaitForNotificationWithTimeout(absl::Seconds(60)));
    EXPECT_EQ(got[t].tokens, Solo({3, 4, 5, t + 6}, 10));
  }
  e->Stop();
  EXPECT_EQ(e->kv_manager().num_free_blocks(), 2048);
}

}  // namespace
}  // namespace kvc
