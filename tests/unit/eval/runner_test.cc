// kvc-eval drivers on kvc-ref: the shared-prefill driver generates exactly what the in-process
// Engine generates for every (prompt, policy, rate), and perplexity with the full cache equals
// the teacher-forced loss of one plain forward pass.
#include "bench/eval/runner.h"

#include <cmath>

#include "bench/eval/tasks.h"
#include "gtest/gtest.h"
#include "kvmanager/kv_manager.h"
#include "model/tokenizer.h"
#include "worker/cpu_executor.h"

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

RunSettings SmallSettings() {
  RunSettings rs;
  rs.block_size = 8;
  rs.protected_window = 8;
  rs.observation_window = 16;
  rs.wave_prompts = 2;  // 3 prompts: two waves
  rs.engine_max_seqs = 8;
  return rs;
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

std::vector<GenerationJob> Jobs() {
  std::vector<GenerationJob> jobs;
  const TaskKind tasks[] = {TaskKind::kNiahSingle, TaskKind::kKv, TaskKind::kVartrack};
  for (int i = 0; i < 3; ++i) {
    auto c = Gen().Generate(tasks[i], 320, i);
    EXPECT_TRUE(c.ok()) << c.status();
    GenerationJob j;
    j.prompt = c->prompt;
    j.max_new_tokens = 6 + 2 * i;
    j.seed = c->seed;
    jobs.push_back(std::move(j));
  }
  return jobs;
}

TEST(RunnerTest, SharedPrefillMatchesTheEngineExactly) {
  auto jobs = Jobs();
  // Make job 1 stop early: its full-cache second token becomes a stop id.
  {
    auto probe = RunSharedPrefill(Model(), {jobs[1]}, {Variant{}}, SmallSettings());
    ASSERT_TRUE(probe.ok()) << probe.status();
    ASSERT_GE((*probe)[0][0].tokens.size(), 2u);
    jobs[1].stop_token_ids = {(*probe)[0][0].tokens[1]};
  }
  int64_t progress_calls = 0;
  auto shared =
      RunSharedPrefill(Model(), jobs, kVariants, SmallSettings(), [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, 3);
        EXPECT_EQ(done, ++progress_calls);
      });
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(progress_calls, 3);
  auto engine = RunWithEngine(Model(), jobs, kVariants, SmallSettings());
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ(shared->size(), 3u);
  ASSERT_EQ(engine->size(), 3u);
  int differs_from_full = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    for (size_t v = 0; v < kVariants.size(); ++v) {
      SCOPED_TRACE(testing::Message() << "prompt " << i << " " << VariantName(kVariants[v]));
      const GenerationResult& s = (*shared)[i][v];
      const GenerationResult& e = (*engine)[i][v];
      EXPECT_EQ(s.tokens, e.tokens);
      EXPECT_EQ(s.kvs_held, e.kvs_held);
      EXPECT_EQ(s.kvs_uncompressed, e.kvs_uncompressed);
      EXPECT_EQ(s.compressions, e.compressions);
      EXPECT_EQ(e.preemptions, 0);
      if (i == 1) {
        EXPECT_LE(s.tokens.size(), static_cast<size_t>(jobs[i].max_new_tokens));
        if (kVariants[v].full()) {
          EXPECT_EQ(s.tokens.size(), 2u);  // stopped at the stop id
        }
      } else {
        EXPECT_EQ(s.tokens.size(), static_cast<size_t>(jobs[i].max_new_tokens));
      }
      const int64_t tokens = static_cast<int64_t>(jobs[i].prompt.size() + s.tokens.size()) - 1;
      EXPECT_EQ(s.kvs_uncompressed, tokens * 16);  // 8 layers x 2 kv heads
      if (kVariants[v].full()) {
        EXPECT_EQ(s.kvs_held, s.kvs_uncompressed);
        EXPECT_EQ(s.compressions, 0);
      } else {
        // Compressed to about 1/rate of the unprotected part.
        EXPECT_LT(s.kvs_held, s.kvs_uncompressed * 0.5);
        EXPECT_GE(s.compressions, 1);
        differs_from_full += s.tokens != (*shared)[i][0].tokens;
      }
    }
  }
  EXPECT_EQ((*shared)[1][0].tokens.back(), jobs[1].stop_token_ids[0]);
  EXPECT_GT(differs_from_full, 0) << "compression never changed an output";
}

TEST(RunnerTest, RejectsBadInput) {
  auto jobs = Jobs();
  EXPECT_EQ(RunSharedPrefill(Model(), {}, kVariants, SmallSettings()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunSharedPrefill(Model(), jobs, {}, SmallSettings()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunWithEngine(Model(), jobs, {Variant{CompressionPolicyKind::kKvCompress, 0.5}},
                          SmallSettings())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  GenerationJob too_long;
  too_long.prompt.assign(5000, 5);
  EXPECT_EQ(RunSharedPrefill(Model(), {too_long}, kVariants, SmallSettings()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RunnerTest, FullCachePerplexityEqualsOneForwardPass) {
  auto windows = Gen().ProseWindows(2, 96);
  ASSERT_TRUE(windows.ok()) << windows.status();
  const int32_t prefix = 64;
  const std::vector<Variant> variants = {Variant{}, Variant{CompressionPolicyKind::kKvCompress, 4},
                                         Variant{CompressionPolicyKind::kStreaming, 8}};
  auto res = RunPerplexity(Model(), *windows, prefix, variants, SmallSettings());
  ASSERT_TRUE(res.ok()) << res.status();
  ASSERT_EQ(res->size(), 3u);

  // Reference: one forward pass per window with every position's logits.
  auto ex = CpuExecutor::Create(Model(), 256, 16);
  ASSERT_TRUE(ex.ok());
  KvManagerOptions ko;
  ko.layout = (*ex)->layout();
  KvManager kv(ko);
  double sum = 0;
  int64_t n = 0;
  for (size_t w = 0; w < windows->size(); ++w) {
    const auto& win = (*windows)[w];
    ASSERT_TRUE(kv.AddSequence(static_cast<int64_t>(w)).ok());
    ASSERT_TRUE(kv.Append(static_cast<int64_t>(w), static_cast<int32_t>(win.size())).ok());
    ForwardBatch b;
    ForwardSequence f;
    f.seq_id = static_cast<int64_t>(w);
    f.tokens = win;
    f.tables = kv.Tables(static_cast<int64_t>(w));
    f.all_logits = true;
    b.seqs.push_back(f);
    ForwardOutput out;
    ASSERT_TRUE((*ex)->Forward(b, &out).ok());
    for (size_t t = prefix - 1; t + 1 < win.size(); ++t) {
      const float* row = out.logits.data() + t * out.vocab_size;
      double mx = -INFINITY, z = 0;
      for (int32_t k = 0; k < out.vocab_size; ++k) mx = std::max<double>(mx, row[k]);
      for (int32_t k = 0; k < out.vocab_size; ++k) z += std::exp(row[k] - mx);
      sum += std::log(z) + mx - row[win[t + 1]];
      n++;
    }
    ASSERT_TRUE(kv.FreeSequence(static_cast<int64_t>(w)).ok());
  }
  const PerplexityResult& full = (*res)[0];
  EXPECT_TRUE(full.variant.full());
  EXPECT_EQ(full.tokens, n);
  EXPECT_NEAR(full.mean_nll, sum / n, 1e-4 * std::fabs(sum / n));
  EXPECT_NEAR(full.perplexity, std::exp(full.mean_nll), 1e-9 * full.perplexity);
  EXPECT_DOUBLE_EQ(full.kept_fraction, 1.0);
  for (size_t v = 1; v < res->size(); ++v) {
    EXPECT_EQ((*res)[v].tokens, n);
    EXPECT_LT((*res)[v].kept_fraction, 0.6) << VariantName((*res)[v].variant);
    EXPECT_NE((*res)[v].mean_nll, full.mean_nll);
    EXPECT_TRUE(std::isfinite((*res)[v].mean_nll));
  }
}

// The exact slot mirror (RunSettings::slot_cache, the default on CUDA) changes no result: on the
// CPU, runs with the mirror (verified against the executor on every mirrored read, parallel
// reads) equal runs without it, token for token, and the mirror really serves the planners.
TEST(RunnerTest, SlotMirrorIsExactAndServesThePlanners) {
  auto jobs = Jobs();
  RunSettings off = SmallSettings();
  off.slot_cache = SlotCache::kOff;
  RunStats off_stats;
  auto base = RunSharedPrefill(Model(), jobs, kVariants, off, nullptr, &off_stats);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(off_stats.slot_block_reads, 0);
  EXPECT_EQ(off_stats.mirror_block_hits, 0);
  EXPECT_GT(off_stats.compressions, 0);
  for (int threads : {1, 3}) {
    SCOPED_TRACE(testing::Message() << threads << " read threads");
    RunSettings on = SmallSettings();
    on.slot_cache = SlotCache::kVerify;
    on.slot_read_threads = threads;
    RunStats stats;
    auto mirrored = RunSharedPrefill(Model(), jobs, kVariants, on, nullptr, &stats);
    ASSERT_TRUE(mirrored.ok()) << mirrored.status();
    EXPECT_EQ(stats.mirror_mismatches, 0);
    EXPECT_GT(stats.slot_block_reads, 0);
    EXPECT_GT(stats.mirror_block_hits, 0);
    // Every read of the executor's slots is a bulk prefetch (one gather and copy on CUDA).
    EXPECT_GT(stats.slot_prefetches, 0);
    EXPECT_EQ(stats.slot_single_block_reads, 0);
    EXPECT_EQ(stats.compressions, off_stats.compressions);
    EXPECT_EQ(stats.forward_calls, off_stats.forward_calls);
    for (size_t i = 0; i < jobs.size(); ++i) {
      for (size_t v = 0; v < kVariants.size(); ++v) {
        SCOPED_TRACE(testing::Message() << "prompt " << i << " " << VariantName(kVariants[v]));
        EXPECT_EQ((*mirrored)[i][v].tokens, (*base)[i][v].tokens);
        EXPECT_EQ((*mirrored)[i][v].kvs_held, (*base)[i][v].kvs_held);
        EXPECT_EQ((*mirrored)[i][v].compressions, (*base)[i][v].compressions);
      }
    }
  }
  // Perplexity drives the same session: identical losses with the mirror.
  auto windows = Gen().ProseWindows(2, 80);
  ASSERT_TRUE(windows.ok()) << windows.status();
  RunSettings on = SmallSettings();
  on.slot_cache = SlotCache::kVerify;
  RunStats ppl_stats;
  auto p_on = RunPerplexity(Model(), *windows, 48, kVariants, on, nullptr, &ppl_stats);
  auto p_off = RunPerplexity(Model(), *windows, 48, kVariants, off);
  ASSERT_TRUE(p_on.ok()) << p_on.status();
  ASSERT_TRUE(p_off.ok()) << p_off.status();
  EXPECT_EQ(ppl_stats.mirror_mismatches, 0);
  EXPECT_GT(ppl_stats.mirror_block_hits, 0);
  for (size_t v = 0; v < kVariants.size(); ++v) {
    EXPECT_EQ((*p_on)[v].mean_nll, (*p_off)[v].mean_nll) << VariantName(kVariants[v]);
    EXPECT_EQ((*p_on)[v].kept_fraction, (*p_off)[v].kept_fraction);
  }
}

// Forking by re-prefill (the CUDA default) gives the copied fork's results on the CPU, where a
// prefill is deterministic: every re-prefill reproduces the base's logits bit for bit.
TEST(RunnerTest, ReprefillForkEqualsCopiedFork) {
  auto jobs = Jobs();
  RunSettings copy = SmallSettings();
  copy.fork = ForkMode::kCopy;
  RunSettings re = SmallSettings();
  re.fork = ForkMode::kReprefill;
  re.slot_cache = SlotCache::kVerify;
  RunStats copy_stats, re_stats;
  auto a = RunSharedPrefill(Model(), jobs, kVariants, copy, nullptr, &copy_stats);
  auto b = RunSharedPrefill(Model(), jobs, kVariants, re, nullptr, &re_stats);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(copy_stats.prefills, 3);
  EXPECT_GT(copy_stats.fork_seconds, 0);
  // One prefill per (prompt, compressed variant) more; the full variant decodes on the base.
  EXPECT_EQ(re_stats.prefills, 3 * static_cast<int64_t>(kVariants.size()));
  EXPECT_EQ(re_stats.reprefill_logits_differ, 0);
  EXPECT_EQ(re_stats.mirror_mismatches, 0);
  EXPECT_EQ(re_stats.slot_single_block_reads, 0);
  EXPECT_EQ(re_stats.compressions, copy_stats.compressions);
  for (size_t i = 0; i < jobs.size(); ++i) {
    for (size_t v = 0; v < kVariants.size(); ++v) {
      SCOPED_TRACE(testing::Message() << "prompt " << i << " " << VariantName(kVariants[v]));
      EXPECT_EQ((*b)[i][v].tokens, (*a)[i][v].tokens);
      EXPECT_EQ((*b)[i][v].kvs_held, (*a)[i][v].kvs_held);
      EXPECT_EQ((*b)[i][v].compressions, (*a)[i][v].compressions);
    }
  }
  auto windows = Gen().ProseWindows(2, 80);
  ASSERT_TRUE(windows.ok()) << windows.status();
  auto pa = RunPerplexity(Model(), *windows, 48, kVariants, copy);
  auto pb = RunPerplexity(Model(), *windows, 48, kVariants, re);
  ASSERT_TRUE(pa.ok()) << pa.status();
  ASSERT_TRUE(pb.ok()) << pb.status();
  for (size_t v = 0; v < kVariants.size(); ++v) {
    EXPECT_EQ((*pa)[v].mean_nll, (*pb)[v].mean_nll) << VariantName(kVariants[v]);
  }
}

TEST(RunnerTest, BackendNamesAndSettings) {
  EXPECT_EQ(BackendName(Backend::kCpu), "cpu");
  EXPECT_EQ(BackendName(Backend::kCuda), "cuda");
  EXPECT_EQ(*ParseBackend("cuda"), Backend::kCuda);
  EXPECT_EQ(*ParseBackend("cpu"), Backend::kCpu);
  EXPECT_EQ(ParseBackend("gpu").status().code(), absl::StatusCode::kInvalidArgument);
  auto jobs = Jobs();
  RunSettings bad = SmallSettings();
  bad.slot_read_threads = 0;
  EXPECT_EQ(RunSharedPrefill(Model(), jobs, kVariants, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!CudaBackendBuilt()) {
    RunSettings cuda = SmallSettings();
    cuda.backend = Backend::kCuda;
    EXPECT_EQ(RunSharedPrefill(Model(), jobs, kVariants, cuda).status().code(),
              absl::StatusCode::kUnimplemented);
    EXPECT_EQ(RunWithEngine(Model(), jobs, kVariants, cuda).status().code(),
              absl::StatusCode::kUnimplemented);
    EXPECT_EQ(CudaDeviceName(0).status().code(), absl::StatusCode::kUnimplemented);
  }
}

}  // namespace
}  // namespace kvc::eval
