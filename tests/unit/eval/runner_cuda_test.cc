// kvc-eval drivers on the CUDA backend (label gpu: runs only on a machine with a device), against
// the CPU backend on the same prompts: the exact slot mirror never differs from the executor's
// device arrays, both drivers run without preemption, and the bf16 results agree with the fp32
// CPU results except on near-ties (token agreement >= 70% of (prompt, variant) pairs; full-cache
// perplexity within 2%).
#include <cmath>

#include "bench/eval/runner.h"
#include "bench/eval/tasks.h"
#include "gtest/gtest.h"
#include "model/tokenizer.h"

namespace kvc::eval {
namespace {

std::shared_ptr<const ModelWeights> Model() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto m = LoadModel("models/kvc-ref");
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  }();
  return w;
}

const TaskGenerator& Gen() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile("models/kvc-ref/tokenizer.json");
    EXPECT_TRUE(t.ok()) << t.status();
    return t->release();
  }();
  static const std::unique_ptr<TaskGenerator> gen = [] {
    auto sources = LoadHaystack("bench/eval/data/heldout.txt");
    EXPECT_TRUE(sources.ok()) << sources.status();
    auto g = TaskGenerator::Create(tok, std::move(*sources));
    EXPECT_TRUE(g.ok()) << g.status();
    return std::move(*g);
  }();
  return *gen;
}

const std::vector<Variant> kVariants = {
    Variant{},
    Variant{CompressionPolicyKind::kKvCompress, 4},
    Variant{CompressionPolicyKind::kKvCompress, 16},
    Variant{CompressionPolicyKind::kSnapKv, 4},
    Variant{CompressionPolicyKind::kPyramidKv, 4},
    Variant{CompressionPolicyKind::kStreaming, 4},
    Variant{CompressionPolicyKind::kRandom, 4},
};

std::vector<GenerationJob> Jobs(int n, int32_t length) {
  std::vector<GenerationJob> jobs;
  for (int i = 0; i < n; ++i) {
    auto c = Gen().Generate(AllTasks()[i % AllTasks().size()], length, i);
    EXPECT_TRUE(c.ok()) << c.status();
    GenerationJob j;
    j.prompt = c->prompt;
    j.max_new_tokens = 8;
    j.seed = c->seed;
    jobs.push_back(std::move(j));
  }
  return jobs;
}

RunSettings Settings(Backend b) {
  RunSettings rs;
  rs.backend = b;
  rs.wave_prompts = 3;
  rs.engine_max_seqs = 16;
  rs.slot_cache = b == Backend::kCuda ? SlotCache::kVerify : SlotCache::kOff;
  return rs;
}

double Agreement(const std::vector<std::vector<GenerationResult>>& a,
                 const std::vector<std::vector<GenerationResult>>& b) {
  int64_t same = 0, all = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t v = 0; v < a[i].size(); ++v) {
      same += a[i][v].tokens == b[i][v].tokens;
      all++;
    }
  }
  return static_cast<double>(same) / static_cast<double>(all);
}

TEST(RunnerCudaTest, SharedDriverMirrorIsExactAndAgreesWithCpu) {
  ASSERT_TRUE(CudaBackendBuilt());
  auto name = CudaDeviceName(0);
  ASSERT_TRUE(name.ok()) << name.status();
  auto jobs = Jobs(6, 1024);
  RunStats stats;
  auto cuda = RunSharedPrefill(Model(), jobs, kVariants, Settings(Backend::kCuda), nullptr, &stats);
  ASSERT_TRUE(cuda.ok()) << cuda.status();  // INTERNAL if a mirrored read differed
  EXPECT_EQ(stats.mirror_mismatches, 0);
  EXPECT_GT(stats.mirror_block_hits, 0);
  EXPECT_GT(stats.slot_block_reads, 0);
  EXPECT_GT(stats.compressions, 0);
  std::printf(
      "CUDA shared driver: %lld prefills, %lld re-prefills with logits other than the "
      "base's, %lld plans, %lld slot-block reads, %lld mirror hits\n",
      static_cast<long long>(stats.prefills), static_cast<long long>(stats.reprefill_logits_differ),
      static_cast<long long>(stats.compressions), static_cast<long long>(stats.slot_block_reads),
      static_cast<long long>(stats.mirror_block_hits));
  // The other fork: slot copies through MoveKvs (and the mirror's replay of them).
  RunSettings copy = Settings(Backend::kCuda);
  copy.fork = ForkMode::kCopy;
  auto copied = RunSharedPrefill(Model(), jobs, kVariants, copy);
  ASSERT_TRUE(copied.ok()) << copied.status();
  const double copy_agree = Agreement(*cuda, *copied);
  std::printf("CUDA re-prefill vs copied forks: %.1f%% agree\n", 100 * copy_agree);
  EXPECT_GE(copy_agree, 0.9);
  auto cpu = RunSharedPrefill(Model(), jobs, kVariants, Settings(Backend::kCpu));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const double agree = Agreement(*cuda, *cpu);
  std::printf("CUDA (%s) vs CPU, shared driver: %.1f%% of %zu (prompt, variant) pairs agree\n",
              name->c_str(), 100 * agree, jobs.size() * kVariants.size());
  EXPECT_GE(agree, 0.7);
  for (size_t i = 0; i < jobs.size(); ++i) {
    for (size_t v = 0; v < kVariants.size(); ++v) {
      const GenerationResult& g = (*cuda)[i][v];
      EXPECT_GE(g.tokens.size(), 1u);
      EXPECT_EQ(g.kvs_uncompressed,
                static_cast<int64_t>(jobs[i].prompt.size() + g.tokens.size() - 1) * 16);
      if (kVariants[v].full()) {
        EXPECT_EQ(g.kvs_held, g.kvs_uncompressed);
      } else {
        EXPECT_LT(g.kvs_held, g.kvs_uncompressed / 2);
        EXPECT_GE(g.compressions, 1);
      }
    }
  }
}

TEST(RunnerCudaTest, EngineDriverRunsOnCuda) {
  auto jobs = Jobs(2, 512);
  auto engine = RunWithEngine(Model(), jobs, kVariants, Settings(Backend::kCuda));
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto shared = RunSharedPrefill(Model(), jobs, kVariants, Settings(Backend::kCuda));
  ASSERT_TRUE(shared.ok()) << shared.status();
  for (const auto& row : *engine) {
    for (const auto& g : row) EXPECT_EQ(g.preemptions, 0);
  }
  const double agree = Agreement(*engine, *shared);
  std::printf("CUDA engine vs CUDA shared driver: %.1f%% agree\n", 100 * agree);
  EXPECT_GE(agree, 0.7);
}

TEST(RunnerCudaTest, FullCachePerplexityMatchesCpu) {
  auto windows = Gen().ProseWindows(2, 384);
  ASSERT_TRUE(windows.ok()) << windows.status();
  RunStats stats;
  auto cuda =
      RunPerplexity(Model(), *windows, 256, kVariants, Settings(Backend::kCuda), nullptr, &stats);
  auto cpu = RunPerplexity(Model(), *windows, 256, kVariants, Settings(Backend::kCpu));
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(stats.mirror_mismatches, 0);
  for (size_t v = 0; v < kVariants.size(); ++v) {
    SCOPED_TRACE(VariantName(kVariants[v]));
    EXPECT_TRUE(std::isfinite((*cuda)[v].mean_nll));
    EXPECT_NEAR((*cuda)[v].mean_nll, (*cpu)[v].mean_nll, 0.02 * (*cpu)[v].mean_nll);
    EXPECT_NEAR((*cuda)[v].kept_fraction, (*cpu)[v].kept_fraction, 0.02);
  }
}

}  // namespace
}  // namespace kvc::eval
