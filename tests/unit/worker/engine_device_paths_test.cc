// The engine's paths for executors that sample and compress where the KV cache lives (the CUDA
// executor: Executor::samples_tokens / evicts_on_device), checked on the CPU with an executor that
// implements both hooks with the reference code (kernels/cpu/sampling.h SampleTokenWithUniform +
// CounterUniform; EvictionPlanner + MoveKvs returning only per-head block counts). The engine must
// give exactly the tokens and KV counts of its host paths for greedy requests, keep the pool's
// invariants on the counts-only plans, and — a property of counter-based sampling — give a seeded
// sampled request the same tokens whether or not it was preempted on the way.
#include <random>

#include "gtest/gtest.h"
#include "common/status_macros.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/eviction_plan.h"
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
    auto cfg = ModelConfig::FromJsonString(kConfig, "engine-device-paths-test");
    auto weights = ModelWeights::Random(*cfg, 9);
    return std::make_shared<const ModelWeights>(std::move(*weights));
  }();
  return w;
}

// A CPU executor with the device-side hooks implemented by the reference code.
class DevicePathExecutor final : public Executor {
 public:
  explicit DevicePathExecutor(std::unique_ptr<CpuExecutor> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const KvLayout& layout() const override { return inner_->layout(); }
  std::string backend() const override { return "cpu-device-paths"; }
  const KvSlotReader& slot_reader() const override { return inner_->slot_reader(); }
  absl::Status MoveKvs(std::span<const KvMove> moves) override { return inner_->MoveKvs(moves); }
  bool samples_tokens() const override { return true; }
  bool evicts_on_device() const override { return true; }

  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    RETURN_IF_ERROR(inner_->Forward(batch, out));
    out->tokens.assign(batch.seqs.size(), -1);
    const int32_t v = out->vocab_size;
    size_t row = 0;
    for (size_t i = 0; i < batch.seqs.size(); ++i) {
      const ForwardSequence& f = batch.seqs[i];
      row += f.all_logits ? f.tokens.size() : 1;
      if (!f.sample) continue;
      std::span<const float> last(out->logits.data() + (row - 1) * v, v);
      out->tokens[i] =
          SampleTokenWithUniform(last, f.sampling, CounterUniform(f.sample_seed, f.sample_counter));
      ++sampled_;
    }
    if (!batch.return_logits) out->logits.clear();
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<int32_t>> EvictOnDevice(
      const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
      const EvictionConstraints& constraints) override {
    EvictionPlanner planner;
    ASSIGN_OR_RETURN(EvictionPlan plan, planner.Plan(layout(), tables, slot_reader(), num_tokens,
                                                     evict_blocks, constraints));
    std::vector<KvMove> moves;
    std::vector<int32_t> counts(layout().heads_per_seq(), 0);
    for (const HeadEviction& h : plan.heads) {
      counts[h.head_index] = h.blocks_freed;
      moves.insert(moves.end(), h.moves.begin(), h.moves.end());
    }
    RETURN_IF_ERROR(inner_->MoveKvs(moves));
    ++evictions_;
    return counts;
  }

  int64_t sampled_ = 0, evictions_ = 0;

 private:
  std::unique_ptr<CpuExecutor> inner_;
};

struct RunResult {
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, EngineUsage> usage;
  int64_t preemptions = 0;
  int64_t sampled = 0, evictions = 0;
};

EngineRequest Request(const std::string& id, int prompt_len, int max_tokens, double rate,
                      float temperature, uint32_t seed) {
  EngineRequest r;
  r.request_id = id;
  std::mt19937 rng(seed);
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(3 + rng() % 90);
  r.sampling.temperature = temperature;
  r.sampling.top_p = temperature > 0 ? 0.9f : 1.0f;
  r.seed = seed;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  if (rate > 1) {
    r.policy = CompressionPolicyKind::kKvCompress;
    r.compression.mode = BudgetMode::kRate;
    r.compression.compression_rate = rate;
    r.compression.constraints.protected_window = 8;
    r.observation_window = 8;
    r.continual = true;
  }
  return r;
}

RunResult RunEngine(bool device_paths, int64_t num_blocks, float temperature, double rate,
              int32_t max_num_seqs = 64) {
  auto cpu = CpuExecutor::Create(TestWeights(), num_blocks, 8);
  EXPECT_TRUE(cpu.ok()) << cpu.status();
  DevicePathExecutor* dev = nullptr;
  std::unique_ptr<Executor> ex;
  if (device_paths) {
    auto d = std::make_unique<DevicePathExecutor>(std::move(*cpu));
    dev = d.get();
    ex = std::move(d);
  } else {
    ex = std::move(*cpu);
  }
  KvManagerOptions ko;
  ko.layout = ex->layout();
  auto kv = KvManager::Create(ko);
  EngineOptions eo;
  eo.check_invariants = true;
  eo.max_num_seqs = max_num_seqs;
  Engine engine(std::move(ex), std::move(*kv), eo, nullptr);
  RunResult run;
  for (int i = 0; i < 6; ++i) {
    const std::string id = "r" + std::to_string(i);
    EngineRequest r = Request(id, 40 + 23 * i, 30, rate, temperature, 100 + i);
    EXPECT_TRUE(engine
                    .Submit(std::move(r),
                            [&run, id](EngineOutput o) {
                              auto& t = run.tokens[id];
                              t.insert(t.end(), o.tokens.begin(), o.tokens.end());
                              if (o.finished) {
                                EXPECT_TRUE(o.status.ok()) << o.status;
                                run.usage[id] = o.usage;
                                run.preemptions += o.usage.preemptions;
                              }
                            })
                    .ok());
  }
  for (int i = 0; i < 100000 && engine.StepForTest(); ++i) {
  }
  EXPECT_EQ(engine.kv_manager().num_free_blocks(), num_blocks);  // every block came back
  if (dev != nullptr) {
    run.sampled = dev->sampled_;
    run.evictions = dev->evictions_;
  }
  return run;
}

TEST(EngineDevicePathsTest, GreedyWithCompressionEqualsTheHostPaths) {
  const RunResult host = RunEngine(false, 4096, 0.0f, 4.0);
  const RunResult dev = RunEngine(true, 4096, 0.0f, 4.0);
  ASSERT_EQ(host.tokens.size(), 6u);
  EXPECT_GT(dev.sampled, 0);
  EXPECT_GT(dev.evictions, 0);
  for (const auto& [id, toks] : host.tokens) {
    EXPECT_EQ(dev.tokens.at(id), toks) << id;
    EXPECT_EQ(toks.size(), 30u) << id;
    EXPECT_EQ(dev.usage.at(id).kvs_held, host.usage.at(id).kvs_held) << id;
    EXPECT_EQ(dev.usage.at(id).compressions, host.usage.at(id).compressions) << id;
    EXPECT_GT(host.usage.at(id).compression_ratio, 2.0) << id;
  }
}

TEST(EngineDevicePathsTest, SeededSamplingIsUnchangedByPreemption) {
  // Plenty of blocks: nothing is preempted. Then a pool where the six requests cannot all grow:
  // the newest running ones are preempted and recomputed. Counter-based draws give the same
  // tokens either way (the host path's sequential RNG cannot promise that).
  const RunResult roomy = RunEngine(true, 4096, 0.8f, 1.0);
  const RunResult tight = RunEngine(true, 2 * 4 * 26, 0.8f, 1.0);
  EXPECT_EQ(roomy.preemptions, 0);
  EXPECT_GT(tight.preemptions, 0);
  for (const auto& [id, toks] : roomy.tokens) {
    EXPECT_EQ(tight.tokens.at(id), toks) << id;
  }
  // And sampling really happened: some sampled token differs from the greedy choice.
  const RunResult greedy = RunEngine(true, 4096, 0.0f, 1.0);
  int differ = 0;
  for (const auto& [id, toks] : roomy.tokens) differ += toks != greedy.tokens.at(id);
  EXPECT_GT(differ, 0);
}

}  // namespace
}  // namespace kvc
