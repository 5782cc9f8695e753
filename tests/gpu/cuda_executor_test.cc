// CudaExecutor (bf16) against the references:
//   * logits of the committed transformers fixtures (tests/fixtures/models/*, fp32) and of
//     models/kvc-ref (tests/fixtures/kvc-ref/reference.safetensors): every row's
//     max_i |ours_i - ref_i| / max_i |ref_i| <= kLogitTol = 2e-2 (bf16 weights, activations and
//     KV against an fp32 reference; 4e-2 for sequences over 256 tokens, see kLongLogitTol). Decode
//     steps are teacher-forced with the reference's greedy tokens; our argmax must equal the
//     reference token wherever the reference's top-1 margin is above 2 * kLogitTol of the row's max
//     |logit| (a near-tie flip below that is only reported). Covered: prompts alone (all
//     positions), batched prefill + decode, prefill mixed with decode and chunked prefill, and
//     decoding after every head's slots were reversed with one MoveKvs list of dependent moves
//     (compaction order).
//   * engine level on kvc-ref: an Engine over CpuExecutor and one over CudaExecutor, the same
//     greedy requests, 64 tokens each, compression off and on (KV-Compress, rate 4, protected
//     window 32): identical tokens; a divergence is reported with its step and the CPU top-1
//     margin at that step.
//   * KV-Compress scores after a prefill (window 32, pool 7) and after decode steps (decode
//     scores) equal the CPU executor's (normwise relative error per (sequence, layer, head)
//     <= kScoreTol = 1e-2 in layer 0, <= kDeepScoreTol = 5e-2 in deeper layers; see below), and
//     eviction plans from both readers select the same KVs at every
//     budget whose CPU plan is stable under random ±5% perturbations of the scores.
//   * bad input returns a Status.
#include "worker/cuda_executor.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/compression_policy.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_manager.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "tests/unit/worker/cpu_executor_test_util.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"

namespace kvc {
namespace {

using testing_util::Argmax;
using testing_util::TestBlockAllocator;

constexpr double kLogitTol = 2e-2;
// Sequences longer than kLongPrompt tokens (kvc-ref's 519-token repeated-text prompt): 4e-2.
// Measured on an H100 (2026-11-24) on the fixture rows of that prompt: transformers' own bf16
// forward is up to 5.2e-2 off its fp32 forward, this executor (fp32 residual stream) up to
// 2.9e-2; the short prompts stay within 1.7e-2 (transformers bf16) and 2e-2 (ours).
constexpr double kLongLogitTol = 4e-2;
constexpr size_t kLongPrompt = 256;
double LogitTol(size_t tokens) { return tokens > kLongPrompt ? kLongLogitTol : kLogitTol; }
// Engine test, free-running greedy decode: step k's logits sit on k decoded tokens whose K/V the
// CUDA engine stored in bf16 (the fixture tests are teacher-forced over one prompt). Measured on
// the H100 with kvc-ref: the bf16-vs-fp32 drift grows with k and reaches 2.0e-2 by step 20 and
// 2.5e-2 by step 63 when both engines keep identical tokens for all 64 steps (before the FA2
// prefill kernel they flipped at a near-tie by step 12-18, so later steps were never compared).
// Steps from kDriftStep on get kDriftLogitTol; a real kernel error is far larger (> 1e-1).
constexpr size_t kDriftStep = 16;
constexpr double kDriftLogitTol = 3e-2;
double EngineStepTol(size_t prompt_tokens, size_t step) {
  const double base = LogitTol(prompt_tokens + step);
  return step >= kDriftStep ? std::max(base, kDriftLogitTol) : base;
}
// Scores: normwise relative error per (sequence, layer, head). Layer 0's q and k come from the
// (bf16-exact) embeddings through one RMSNorm and one GEMM on both backends, so its scores test
// the score kernels themselves: <= kScoreTol. Deeper layers' q/k inherit the activation
// differences of bf16 vs fp32 execution compounded over the layers (the same differences the
// 2e-2 logits tolerance allows), and squaring probabilities doubles their relative error:
// <= kDeepScoreTol.
constexpr double kScoreTol = 1e-2;
constexpr double kDeepScoreTol = 5e-2;

double RelError(const float* ours, const float* ref, int32_t n) {
  double max_ref = 0, max_diff = 0;
  for (int32_t i = 0; i < n; ++i) {
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
    max_diff = std::max(max_diff, std::fabs(double(ours[i]) - ref[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

// (top1 - top2) / max |x| of a row.
double Margin(const float* row, int32_t n) {
  double a = -1e300, b = -1e300, mx = 0;
  for (int32_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::fabs(double(row[i])));
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return (a - b) / std::max(mx, 1e-30);
}

struct PromptRef {
  std::vector<int32_t> ids;
  std::vector<int32_t> logit_positions;  // rows of `logits` (all positions for the fixtures)
  std::vector<float> logits;
  std::vector<int32_t> greedy;
  std::vector<float> greedy_logits;
};

std::vector<PromptRef> LoadReference(const std::string& file, int prompts) {
  std::vector<PromptRef> refs;
  auto f = SafetensorsFile::Open(file);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return refs;
  for (int p = 0; p < prompts; ++p) {
    PromptRef r;
    auto get = [&](const std::string& what) {
      return (*f)->Find(absl::StrCat("prompt_", p, ".", what));
    };
    r.ids = *ToInt32(*get("ids"));
    r.logits = *ToFloat32(*get("logits"));
    r.greedy = *ToInt32(*get("greedy_tokens"));
    r.greedy_logits = *ToFloat32(*get("greedy_logits"));
    if (const TensorView* pos = get("logit_positions")) {
      r.logit_positions = *ToInt32(*pos);
    } else {
      for (size_t i = 0; i < r.ids.size(); ++i) r.logit_positions.push_back(int32_t(i));
    }
    refs.push_back(std::move(r));
  }
  return refs;
}

std::unique_ptr<CudaExecutor> MakeCuda(std::shared_ptr<const ModelWeights> w, int64_t blocks,
                                       int32_t bs) {
  auto e = CudaExecutor::Create(std::move(w), blocks, bs);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Logits parity with the transformers fixtures.

struct ParityCase {
  const char* model;
  int32_t block_size;
};

class CudaParityTest : public ::testing::TestWithParam<ParityCase> {
 protected:
  void SetUp() override {
    dir_ = std::string("tests/fixtures/models/") + GetParam().model;
    auto w = LoadModel(dir_);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = *w;
    refs_ = LoadReference(dir_ + "/reference.safetensors", 3);
    ASSERT_EQ(refs_.size(), 3u);
    vocab_ = weights_->config.vocab_size;
    exec_ = MakeCuda(weights_, 512, GetParam().block_size);
    ASSERT_NE(exec_, nullptr);
    alloc_ = std::make_unique<TestBlockAllocator>(exec_->layout(), GetParam().block_size);
  }
  void TearDown() override {
    std::printf(
        "[ cuda parity ] %s bs %d: max rel error %.3g over %lld rows; argmax flips at "
        "near-ties %d (smallest reference margin there %.3g)\n",
        GetParam().model, GetParam().block_size, max_err_, (long long)rows_, near_flips_,
        near_flip_margin_);
  }

  void Check(const float* ours, const float* ref, const std::string& what) {
    const double e = RelError(ours, ref, vocab_);
    max_err_ = std::max(max_err_, e);
    ++rows_;
    EXPECT_LE(e, kLogitTol) << what;
  }
  // Argmax of ours vs the reference token, required where the reference margin is clear.
  void CheckToken(const float* ours, const float* ref, int32_t want, const std::string& what) {
    const int32_t got = Argmax(ours, vocab_);
    if (got == want) return;
    const double m = Margin(ref, vocab_);
    if (m > 2 * kLogitTol) {
      ADD_FAILURE() << what << ": argmax " << got << " != reference " << want
                    << " with reference margin " << m;
    } else {
      ++near_flips_;
      near_flip_margin_ = std::min(near_flip_margin_, m);
      std::printf("[ near-tie ] %s: argmax %d != %d, reference margin %.3g\n", what.c_str(), got,
                  want, m);
    }
  }

  std::vector<float> Step(std::vector<ForwardSequence> seqs) {
    ForwardBatch batch;
    batch.seqs = std::move(seqs);
    ForwardOutput out;
    absl::Status st = exec_->Forward(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(out.vocab_size, vocab_);
    return out.logits;
  }

  // Teacher-forced decode of the given prompts together from `first_step` to step 31.
  void DecodeTogether(const std::vector<int>& prompts, std::vector<SequenceBlockTables>* tables,
                      int first_step) {
    for (int step = first_step; step < 32; ++step) {
      std::vector<ForwardSequence> seqs(prompts.size());
      std::vector<std::vector<int32_t>> toks(prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        const PromptRef& r = refs_[prompts[i]];
        toks[i] = {r.greedy[step - 1]};
        alloc_->Reserve(&(*tables)[i], 1);
        seqs[i].seq_id = prompts[i];
        seqs[i].tokens = toks[i];
        seqs[i].start_position = static_cast<int32_t>(r.ids.size()) + step - 1;
        seqs[i].tables = &(*tables)[i];
      }
      auto logits = Step(seqs);
      ASSERT_EQ(logits.size(), prompts.size() * vocab_);
      for (size_t i = 0; i < prompts.size(); ++i) {
        const PromptRef& r = refs_[prompts[i]];
        const float* ref = r.greedy_logits.data() + step * vocab_;
        const std::string what = absl::StrCat("prompt ", prompts[i], " step ", step);
        Check(logits.data() + i * vocab_, ref, what);
        CheckToken(logits.data() + i * vocab_, ref, r.greedy[step], what);
      }
    }
  }

  std::string dir_;
  std::shared_ptr<const ModelWeights> weights_;
  std::vector<PromptRef> refs_;
  int32_t vocab_ = 0;
  std::unique_ptr<CudaExecutor> exec_;
  std::unique_ptr<TestBlockAllocator> alloc_;
  double max_err_ = 0;
  int64_t rows_ = 0;
  int near_flips_ = 0;
  double near_flip_margin_ = 1;
};

TEST_P(CudaParityTest, PromptLogitsEveryPosition) {
  for (int p = 0; p < 3; ++p) {
    const PromptRef& r = refs_[p];
    SequenceBlockTables t = alloc_->NewSequence();
    alloc_->Reserve(&t, static_cast<int32_t>(r.ids.size()));
    ForwardSequence s;
    s.seq_id = p;
    s.tokens = r.ids;
    s.tables = &t;
    s.all_logits = true;
    auto logits = Step({s});
    ASSERT_EQ(logits.size(), r.ids.size() * vocab_);
    for (size_t i = 0; i < r.ids.size(); ++i) {
      Check(logits.data() + i * vocab_, r.logits.data() + i * vocab_,
            absl::StrCat("prompt ", p, " position ", i));
    }
    alloc_->Release(&t);
  }
}

TEST_P(CudaParityTest, BatchedPrefillThenDecode) {
  std::vector<SequenceBlockTables> tables(3, alloc_->NewSequence());
  std::vector<ForwardSequence> seqs(3);
  for (int p = 0; p < 3; ++p) {
    alloc_->Reserve(&tables[p], static_cast<int32_t>(refs_[p].ids.size()));
    seqs[p].seq_id = p;
    seqs[p].tokens = refs_[p].ids;
    seqs[p].tables = &tables[p];
  }
  auto logits = Step(seqs);
  ASSERT_EQ(logits.size(), 3u * vocab_);
  for (int p = 0; p < 3; ++p) {
    const std::string what = absl::StrCat("batched prompt ", p, " step 0");
    Check(logits.data() + p * vocab_, refs_[p].greedy_logits.data(), what);
    CheckToken(logits.data() + p * vocab_, refs_[p].greedy_logits.data(), refs_[p].greedy[0], what);
  }
  DecodeTogether({0, 1, 2}, &tables, 1);
}

TEST_P(CudaParityTest, PrefillMixedWithDecodeAndChunkedPrefill) {
  std::vector<SequenceBlockTables> tables(3, alloc_->NewSequence());
  const PromptRef &r0 = refs_[0], &r1 = refs_[1], &r2 = refs_[2];
  const int32_t chunk = static_cast<int32_t>(r2.ids.size()) / 2;
  alloc_->Reserve(&tables[0], static_cast<int32_t>(r0.ids.size()));
  ForwardSequence a;
  a.seq_id = 0;
  a.tokens = r0.ids;
  a.tables = &tables[0];
  auto la = Step({a});
  Check(la.data(), r0.greedy_logits.data(), "A prompt 0");

  alloc_->Reserve(&tables[0], 1);
  alloc_->Reserve(&tables[1], static_cast<int32_t>(r1.ids.size()));
  alloc_->Reserve(&tables[2], chunk);
  std::vector<int32_t> t0 = {r0.greedy[0]};
  std::vector<int32_t> c1(r2.ids.begin(), r2.ids.begin() + chunk);
  std::vector<int32_t> c2(r2.ids.begin() + chunk, r2.ids.end());
  ForwardSequence b0, b1, b2;
  b0.seq_id = 0;
  b0.tokens = t0;
  b0.start_position = static_cast<int32_t>(r0.ids.size());
  b0.tables = &tables[0];
  b1.seq_id = 1;
  b1.tokens = r1.ids;
  b1.tables = &tables[1];
  b2.seq_id = 2;
  b2.tokens = c1;
  b2.tables = &tables[2];
  b2.all_logits = true;
  auto lb = Step({b0, b1, b2});
  ASSERT_EQ(lb.size(), (2 + c1.size()) * vocab_);
  Check(lb.data(), r0.greedy_logits.data() + vocab_, "B prompt 0 step 1");
  Check(lb.data() + vocab_, r1.greedy_logits.data(), "B prompt 1 step 0");
  for (int32_t i = 0; i < chunk; ++i) {
    Check(lb.data() + (2 + i) * vocab_, r2.logits.data() + i * vocab_,
          absl::StrCat("B prompt 2 chunk 1 position ", i));
  }

  alloc_->Reserve(&tables[0], 1);
  alloc_->Reserve(&tables[1], 1);
  alloc_->Reserve(&tables[2], static_cast<int32_t>(c2.size()));
  std::vector<int32_t> d0 = {r0.greedy[1]}, d1 = {r1.greedy[0]};
  ForwardSequence e0, e1, e2;
  e0.seq_id = 0;
  e0.tokens = d0;
  e0.start_position = static_cast<int32_t>(r0.ids.size()) + 1;
  e0.tables = &tables[0];
  e1.seq_id = 1;
  e1.tokens = d1;
  e1.start_position = static_cast<int32_t>(r1.ids.size());
  e1.tables = &tables[1];
  e2.seq_id = 2;
  e2.tokens = c2;
  e2.start_position = chunk;
  e2.tables = &tables[2];
  e2.all_logits = true;
  auto lc = Step({e0, e1, e2});
  ASSERT_EQ(lc.size(), (2 + c2.size()) * vocab_);
  Check(lc.data(), r0.greedy_logits.data() + 2 * vocab_, "C prompt 0 step 2");
  Check(lc.data() + vocab_, r1.greedy_logits.data() + vocab_, "C prompt 1 step 1");
  for (size_t i = 0; i < c2.size(); ++i) {
    Check(lc.data() + (2 + i) * vocab_, r2.logits.data() + (chunk + i) * vocab_,
          absl::StrCat("C prompt 2 chunk 2 position ", chunk + i));
  }
  std::vector<SequenceBlockTables> t2 = {tables[2]};
  DecodeTogether({2}, &t2, 1);
  std::vector<SequenceBlockTables> t1 = {tables[1]};
  DecodeTogether({1}, &t1, 2);
  std::vector<SequenceBlockTables> t0b = {tables[0]};
  DecodeTogether({0}, &t0b, 3);
}

TEST_P(CudaParityTest, DecodeAfterMoveKvsReversedEveryHead) {
  const PromptRef& r = refs_[2];
  std::vector<SequenceBlockTables> tables = {alloc_->NewSequence()};
  const int32_t n = static_cast<int32_t>(r.ids.size());
  alloc_->Reserve(&tables[0], n);
  ForwardSequence s;
  s.tokens = r.ids;
  s.tables = &tables[0];
  auto logits = Step({s});
  Check(logits.data(), r.greedy_logits.data(), "prefill");

  SequenceBlockTables spare_t = alloc_->NewSequence();
  alloc_->Reserve(&spare_t, 1);
  const int32_t spare = spare_t.heads[0].blocks[0];
  const int32_t bs = GetParam().block_size;
  // One list for all heads: reverse each head through the spare slot (each swap is a chain of
  // three dependent moves, so MoveKvs must split the list into ordered launches).
  std::vector<KvMove> moves;
  auto mv = [&](int32_t sb, int32_t so, int32_t db, int32_t dof) {
    KvMove m;
    m.src_block = sb;
    m.src_offset = so;
    m.dst_block = db;
    m.dst_offset = dof;
    moves.push_back(m);
  };
  const HeadBlockTable& h0 = tables[0].heads[0];
  auto k_last = exec_->ReadKvRow(h0.blocks[(n - 1) / bs], (n - 1) % bs, false);
  auto v_first = exec_->ReadKvRow(h0.blocks[0], 0, true);
  ASSERT_TRUE(k_last.ok() && v_first.ok());
  for (const HeadBlockTable& h : tables[0].heads) {
    for (int32_t i = 0, j = h.num_kvs - 1; i < j; ++i, --j) {
      const int32_t bi = h.blocks[i / bs], oi = i % bs, bj = h.blocks[j / bs], oj = j % bs;
      mv(bi, oi, spare, 0);
      mv(bj, oj, bi, oi);
      mv(spare, 0, bj, oj);
    }
  }
  ASSERT_TRUE(exec_->MoveKvs(moves).ok());
  for (const HeadBlockTable& h : tables[0].heads) {
    ASSERT_EQ(exec_->slot_reader().Position(h.blocks[0], 0), n - 1);
    ASSERT_EQ(exec_->slot_reader().Position(h.blocks[(n - 1) / bs], (n - 1) % bs), 0);
  }
  auto k0 = exec_->ReadKvRow(h0.blocks[0], 0, false);
  auto vl = exec_->ReadKvRow(h0.blocks[(n - 1) / bs], (n - 1) % bs, true);
  ASSERT_TRUE(k0.ok() && vl.ok());
  EXPECT_EQ(*k0, *k_last);
  EXPECT_EQ(*vl, *v_first);
  DecodeTogether({2}, &tables, 1);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaParityTest,
    ::testing::Values(ParityCase{"llama_gqa_llama3", 16}, ParityCase{"llama_gqa_llama3", 8},
                      ParityCase{"qwen2_qkv_bias", 16}, ParityCase{"qwen2_qkv_bias", 32},
                      ParityCase{"llama_tied", 16}, ParityCase{"llama_tied", 8}),
    [](const ::testing::TestParamInfo<ParityCase>& info) {
      return std::string(info.param.model) + "_bs" + std::to_string(info.param.block_size);
    });

// ---------------------------------------------------------------------------------------------
// kvc-ref against transformers.

std::shared_ptr<const ModelWeights> RefWeights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto r = LoadModel("models/kvc-ref");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : nullptr;
  }();
  return w;
}

TEST(CudaRefModelTest, LogitsAndTeacherForcedGreedyMatchTransformers) {
  auto w = RefWeights();
  ASSERT_NE(w, nullptr);
  auto refs = LoadReference("tests/fixtures/kvc-ref/reference.safetensors", 3);
  ASSERT_EQ(refs.size(), 3u);
  const int32_t vocab = w->config.vocab_size;
  auto ex = MakeCuda(w, 2048, 16);
  ASSERT_NE(ex, nullptr);
  TestBlockAllocator alloc(ex->layout(), 3);
  double worst = 0;
  for (int p = 0; p < 3; ++p) {
    const PromptRef& r = refs[p];
    SequenceBlockTables t = alloc.NewSequence();
    alloc.Reserve(&t, static_cast<int32_t>(r.ids.size()));
    ForwardBatch batch;
    ForwardSequence fs;
    fs.seq_id = p;
    fs.tokens = r.ids;
    fs.tables = &t;
    fs.all_logits = true;
    batch.seqs.push_back(fs);
    ForwardOutput out;
    ASSERT_TRUE(ex->Forward(batch, &out).ok());
    for (size_t i = 0; i < r.logit_positions.size(); ++i) {
      const double e = RelError(out.logits.data() + int64_t(r.logit_positions[i]) * vocab,
                                r.logits.data() + int64_t(i) * vocab, vocab);
      worst = std::max(worst, e);
      EXPECT_LE(e, LogitTol(r.ids.size()))
          << "prompt " << p << " position " << r.logit_positions[i];
    }
    std::vector<int32_t> seq = r.ids;
    const int32_t steps = static_cast<int32_t>(r.greedy_logits.size() / vocab);
    const float* last = out.logits.data() + int64_t(r.ids.size() - 1) * vocab;
    EXPECT_LE(RelError(last, r.greedy_logits.data(), vocab), LogitTol(r.ids.size()));
    if (Margin(r.greedy_logits.data(), vocab) > 2 * kLogitTol) {
      EXPECT_EQ(Argmax(last, vocab), r.greedy[0]) << "prompt " << p << " greedy step 0";
    }
    for (int32_t step = 1; step < steps; ++step) {
      seq.push_back(r.greedy[step - 1]);
      alloc.Reserve(&t, 1);
      ForwardBatch db;
      ForwardSequence d;
      d.seq_id = p;
      d.tokens = std::span<const int32_t>(seq).subspan(seq.size() - 1, 1);
      d.start_position = static_cast<int32_t>(seq.size()) - 1;
      d.tables = &t;
      db.seqs.push_back(d);
      ASSERT_TRUE(ex->Forward(db, &out).ok());
      const float* ref = r.greedy_logits.data() + int64_t(step) * vocab;
      const double e = RelError(out.logits.data(), ref, vocab);
      worst = std::max(worst, e);
      EXPECT_LE(e, LogitTol(r.ids.size())) << "prompt " << p << " greedy step " << step;
      if (Margin(ref, vocab) > 2 * kLogitTol) {
        EXPECT_EQ(Argmax(out.logits.data(), vocab), r.greedy[step])
            << "prompt " << p << " greedy step " << step;
      }
    }
    alloc.Release(&t);
  }
  std::printf("[ kvc-ref ] max rel logit error vs transformers %.3g\n", worst);
}

// ---------------------------------------------------------------------------------------------
// Engine level: CPU engine vs CUDA engine, greedy, 64 tokens.

// Forwards to an executor and records every returned logits row by sequence id (with the index
// of the Forward() that produced it) and every MoveKvs() list as logical (src_slot, dst_slot)
// pairs, with the sequence that owns its blocks and the number of Forward()s before it.
class RecordingExecutor final : public Executor {
 public:
  struct Row {
    int forward = 0;
    std::vector<float> logits;
  };
  struct Log {
    std::map<int64_t, std::vector<Row>> rows;
    struct Moves {
      int forward = 0;
      int64_t seq_id = -1;
      std::vector<std::pair<int32_t, int32_t>> slots;
    };
    std::vector<Moves> moves;
  };
  RecordingExecutor(std::unique_ptr<Executor> inner, Log* log)
      : inner_(std::move(inner)), log_(log) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const KvLayout& layout() const override { return inner_->layout(); }
  std::string backend() const override { return inner_->backend(); }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    RETURN_IF_ERROR(inner_->Forward(batch, out));
    ++forwards_;
    for (const ForwardSequence& s : batch.seqs) {
      for (const HeadBlockTable& h : s.tables->heads) {
        for (int32_t b : h.blocks) owner_[b] = s.seq_id;
      }
    }
    const int32_t v = out->vocab_size;
    size_t row = 0;
    for (const ForwardSequence& s : batch.seqs) {
      const size_t n = s.all_logits ? s.tokens.size() : 1;
      for (size_t i = 0; i < n; ++i, ++row) {
        log_->rows[s.seq_id].push_back(
            Row{forwards_, std::vector<float>(out->logits.begin() + row * v,
                                              out->logits.begin() + (row + 1) * v)});
      }
    }
    return absl::OkStatus();
  }
  const KvSlotReader& slot_reader() const override { return inner_->slot_reader(); }
  absl::Status MoveKvs(std::span<const KvMove> moves) override {
    Log::Moves m;
    m.forward = forwards_;
    if (!moves.empty()) m.seq_id = owner_[moves[0].dst_block];
    for (const KvMove& mv : moves) m.slots.push_back({mv.src_slot, mv.dst_slot});
    log_->moves.push_back(std::move(m));
    return inner_->MoveKvs(moves);
  }

 private:
  std::unique_ptr<Executor> inner_;
  Log* log_;
  int forwards_ = 0;
  std::map<int32_t, int64_t> owner_;  // block id -> sequence, as of the last Forward()
};

struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;  // per request
  std::vector<EngineUsage> usage;
  RecordingExecutor::Log log;  // rows by seq id (1, 2, ... in submission order)
};

void RunEngine(std::unique_ptr<Executor> ex, const std::vector<std::vector<int32_t>>& prompts,
               bool compress, EngineRun* run) {
  KvManagerOptions ko;
  ko.layout = ex->layout();
  auto kv = KvManager::Create(ko);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EngineOptions opts;
  opts.check_invariants = true;
  Engine engine(std::make_unique<RecordingExecutor>(std::move(ex), &run->log), std::move(*kv), opts,
                nullptr);
  run->tokens.assign(prompts.size(), {});
  run->usage.assign(prompts.size(), {});
  std::vector<bool> done(prompts.size(), false);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EngineRequest r;
    r.request_id = absl::StrCat("r", i);
    r.prompt = prompts[i];
    r.sampling.temperature = 0;
    r.seed = 1;
    r.max_tokens = 64;
    r.ignore_eos = true;
    r.observation_window = 32;
    if (compress) {
      r.policy = CompressionPolicyKind::kKvCompress;
      r.compression.mode = BudgetMode::kRate;
      r.compression.compression_rate = 4.0;
      r.compression.constraints.protected_window = 32;
    }
    ASSERT_TRUE(engine
                    .Submit(r,
                            [run, &done, i](EngineOutput o) {
                              run->tokens[i].insert(run->tokens[i].end(), o.tokens.begin(),
                                                    o.tokens.end());
                              if (o.finished) {
                                EXPECT_TRUE(o.status.ok()) << o.status;
                                run->usage[i] = o.usage;
                                done[i] = true;
                              }
                            })
                    .ok());
  }
  for (int i = 0; i < 10000 && engine.StepForTest(); ++i) {
  }
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_TRUE(done[i]) << "request " << i;
}

// The engine prompts: kvc-ref's long fixture prompt (519 tokens) and two prompts whose greedy
// continuations (64 tokens, compression off and on) have the largest smallest CPU top-1 margins
// among 198 prefixes of repeated texts scanned on the CPU engine (about 4e-3 of max |logit|; no
// prompt of this model reached 1e-2 over 2 x 64 steps, so near-tie flips stay possible).
std::vector<std::vector<int32_t>> EnginePrompts() {
  std::vector<std::vector<int32_t>> prompts;
  auto tok = Tokenizer::FromFile("models/kvc-ref/tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return prompts;
  auto repeat = [](const std::string& t, int n) {
    std::string o;
    for (int i = 0; i < n; ++i) o += t;
    return o;
  };
  auto prefix = [&](const std::string& text, size_t n) {
    auto ids = (*tok)->Encode(text, /*add_special_tokens=*/true);
    EXPECT_TRUE(ids.ok() && ids->size() >= n);
    ids->resize(n);
    return *ids;
  };
  prompts.push_back(prefix(repeat("a b c d e f g h i j k l m n o p q r s t u v w x y z ", 6), 72));
  prompts.push_back(prefix(repeat("Call me Ishmael. ", 20), 102));
  auto refs = LoadReference("tests/fixtures/kvc-ref/reference.safetensors", 3);
  if (refs.size() == 3) prompts.push_back(refs[2].ids);
  return prompts;
}

class CudaEngineTest : public ::testing::TestWithParam<bool> {};

// Tokens must be identical until a divergence, which is allowed only (and reported) where the
// CPU's top-1 margin is below 2 * kLogitTol (a flip then needs no more error than the logits
// tolerance allows) or after the two engines' compaction moves first differed (an eviction
// near-tie: other KVs kept). Logits must be within LogitTol of the CPU's for every step of the
// common prefix computed before any compaction difference; usage (KVs held, compressions) must
// be equal when the tokens and all compaction moves were.
TEST_P(CudaEngineTest, GreedyTokensMatchTheCpuEngine) {
  const bool compress = GetParam();
  const char* mode = compress ? "compressed" : "full";
  auto w = RefWeights();
  ASSERT_NE(w, nullptr);
  const std::vector<std::vector<int32_t>> prompts = EnginePrompts();
  ASSERT_EQ(prompts.size(), 3u);
  const int32_t vocab = w->config.vocab_size;

  EngineRun cpu, gpu;
  {
    auto ex = CpuExecutor::Create(w, 4096, 16);
    ASSERT_TRUE(ex.ok()) << ex.status();
    RunEngine(std::move(*ex), prompts, compress, &cpu);
  }
  auto cuda = MakeCuda(w, 4096, 16);
  ASSERT_NE(cuda, nullptr);
  RunEngine(std::move(cuda), prompts, compress, &gpu);

  // Per sequence: the first Forward() count after which its compaction moves differ (its
  // eviction plans differed, so it holds other KVs from then on).
  constexpr int kNever = std::numeric_limits<int>::max();
  auto moves_differ_after = [&](int64_t seq_id) {
    std::vector<const RecordingExecutor::Log::Moves*> c, g;
    for (const auto& m : cpu.log.moves) {
      if (m.seq_id == seq_id) c.push_back(&m);
    }
    for (const auto& m : gpu.log.moves) {
      if (m.seq_id == seq_id) g.push_back(&m);
    }
    for (size_t k = 0; k < std::max(c.size(), g.size()); ++k) {
      if (k >= c.size()) return g[k]->forward;
      if (k >= g.size()) return c[k]->forward;
      if (c[k]->forward != g[k]->forward || c[k]->slots != g[k]->slots) {
        return std::min(c[k]->forward, g[k]->forward);
      }
    }
    return kNever;
  };

  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(cpu.tokens[i].size(), 64u);
    ASSERT_EQ(gpu.tokens[i].size(), 64u);
    const auto& crow = cpu.log.rows[static_cast<int64_t>(i) + 1];
    const auto& grow = gpu.log.rows[static_cast<int64_t>(i) + 1];
    const int differ = moves_differ_after(static_cast<int64_t>(i) + 1);
    ASSERT_GE(crow.size(), 64u);
    ASSERT_GE(grow.size(), 64u);
    size_t same = 0;
    while (same < 64 && cpu.tokens[i][same] == gpu.tokens[i][same]) ++same;
    double worst = 0, min_margin = 1;
    size_t checked = 0;
    for (size_t k = 0; k <= std::min<size_t>(same, 63); ++k) {
      min_margin = std::min(min_margin, Margin(crow[k].logits.data(), vocab));
      if (crow[k].forward > differ || grow[k].forward > differ) break;
      const double e = RelError(grow[k].logits.data(), crow[k].logits.data(), vocab);
      worst = std::max(worst, e);
      ++checked;
      EXPECT_LE(e, EngineStepTol(prompts[i].size(), k))
          << mode << " request " << i << " step " << k;
    }
    std::printf(
        "[ engine %s ] request %zu (%zu prompt tokens): %zu/64 tokens equal; logits "
        "checked on %zu steps, max rel error cuda vs cpu %.3g; smallest cpu margin over "
        "the common steps %.3g; kvs held %lld / %lld, compressions %d; %s\n",
        mode, i, prompts[i].size(), same, checked, worst, min_margin,
        (long long)gpu.usage[i].kvs_held, (long long)gpu.usage[i].kvs_uncompressed,
        gpu.usage[i].compressions,
        differ == kNever ? "compaction moves identical throughout"
                         : absl::StrCat("compaction moves differ after forward ", differ).c_str());
    if (same < 64) {
      const int32_t a = cpu.tokens[i][same], b = gpu.tokens[i][same];
      const double margin = Margin(crow[same].logits.data(), vocab);
      const bool after_plans_differ = crow[same].forward > differ;
      const std::string msg = absl::StrCat(
          mode, " request ", i, " diverges at step ", same, ": cpu token ", a, " (logits ",
          crow[same].logits[a], " vs ", crow[same].logits[b], "), cuda token ", b, " (logits ",
          grow[same].logits[b], " vs ", grow[same].logits[a], "); cpu top-1 margin ", margin,
          " of max |logit|", after_plans_differ ? " (after the compaction moves differed)" : "");
      if (margin < 2 * kLogitTol || after_plans_differ) {
        std::printf("[ near-tie ] %s\n", msg.c_str());
      } else {
        ADD_FAILURE() << msg;
      }
    } else if (differ == kNever) {
      EXPECT_EQ(cpu.usage[i].kvs_held, gpu.usage[i].kvs_held) << "request " << i;
      EXPECT_EQ(cpu.usage[i].compressions, gpu.usage[i].compressions) << "request " << i;
    }
  }
  if (compress) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_GE(gpu.usage[i].compressions, 1) << "request " << i;
      EXPECT_LT(gpu.usage[i].kvs_held * 3, gpu.usage[i].kvs_uncompressed * 2) << "request " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Compression, CudaEngineTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("On") : std::string("Off");
                         });

// ---------------------------------------------------------------------------------------------
// KV-Compress scores and eviction plans: CUDA vs CPU on the same block tables.

// Scores multiplied by (1 + delta * u), u in [-1, 1] from a hash of (block, offset, seed).
class PerturbedReader final : public KvSlotReader {
 public:
  PerturbedReader(const KvSlotReader& base, double delta, uint64_t seed)
      : base_(base), delta_(delta), seed_(seed) {}
  float Score(int32_t block, int32_t offset) const override {
    return Perturb(base_.Score(block, offset), block, offset);
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    return base_.Position(block, offset);
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    base_.ReadBlock(block, count, scores, positions);
    for (int32_t i = 0; i < count; ++i) scores[i] = Perturb(scores[i], block, i);
  }

 private:
  float Perturb(float s, int32_t block, int32_t offset) const {
    uint64_t x = (static_cast<uint64_t>(block) << 20) ^ static_cast<uint64_t>(offset) ^
                 (seed_ * 0x9e3779b97f4a7c15ull);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    const double u = static_cast<double>(x >> 11) / 9007199254740992.0 * 2 - 1;
    return static_cast<float>(s * (1 + delta_ * u));
  }
  const KvSlotReader& base_;
  double delta_;
  uint64_t seed_;
};

bool SamePlan(const EvictionPlan& a, const EvictionPlan& b) {
  if (a.heads.size() != b.heads.size()) return false;
  for (size_t i = 0; i < a.heads.size(); ++i) {
    if (a.heads[i].head_index != b.heads[i].head_index ||
        a.heads[i].blocks_freed != b.heads[i].blocks_freed ||
        a.heads[i].evicted_slots != b.heads[i].evicted_slots) {
      return false;
    }
  }
  return true;
}

TEST(CudaScoresTest, ScoresAndEvictionPlansMatchTheCpuExecutor) {
  auto w = RefWeights();
  ASSERT_NE(w, nullptr);
  auto refs = LoadReference("tests/fixtures/kvc-ref/reference.safetensors", 3);
  ASSERT_EQ(refs.size(), 3u);
  const int32_t vocab = w->config.vocab_size;
  constexpr int32_t kBs = 16;
  auto cpu_or = CpuExecutor::Create(w, 2048, kBs);
  ASSERT_TRUE(cpu_or.ok());
  std::unique_ptr<CpuExecutor> cpu = std::move(*cpu_or);
  auto gpu = MakeCuda(w, 2048, kBs);
  ASSERT_NE(gpu, nullptr);
  KvManagerOptions ko;
  ko.layout = cpu->layout();
  ASSERT_EQ(gpu->layout().num_blocks, ko.layout.num_blocks);
  ASSERT_EQ(gpu->layout().heads_per_seq(), ko.layout.heads_per_seq());
  KvManager kv(ko);
  const KvLayout& layout = kv.layout();

  // Sequences: 1 = prompt 2 (519 tokens), 2 = prompt 1 (28), scored (window 32, pool 7) and then
  // decode-scored; 3 = prompt 0 (6), never scored (its scores must stay 0).
  struct Seq {
    int64_t id;
    std::vector<int32_t> tokens;
    bool scored;
  };
  std::vector<Seq> seqs = {{1, refs[2].ids, true}, {2, refs[1].ids, true}, {3, refs[0].ids, false}};
  ForwardBatch batch;
  batch.score_pool_kernel = 7;
  for (Seq& s : seqs) {
    ASSERT_TRUE(kv.AddSequence(s.id).ok());
    ASSERT_TRUE(kv.Append(s.id, static_cast<int32_t>(s.tokens.size())).ok());
  }
  // Tables() pointers stay valid while the sequences are not mutated; rebuild the batch per step.
  auto make_batch = [&](bool prefill) {
    ForwardBatch b;
    b.score_pool_kernel = 7;
    for (Seq& s : seqs) {
      ForwardSequence f;
      f.seq_id = s.id;
      f.tables = kv.Tables(s.id);
      if (prefill) {
        f.tokens = s.tokens;
        f.score_queries = s.scored ? 32 : 0;
        f.score_pool = true;
      } else {
        f.tokens = std::span<const int32_t>(s.tokens).subspan(s.tokens.size() - 1, 1);
        f.start_position = static_cast<int32_t>(s.tokens.size()) - 1;
        f.score_queries = s.scored ? 1 : 0;
      }
      b.seqs.push_back(f);
    }
    return b;
  };

  auto compare_scores = [&](const char* phase) {
    std::vector<double> per_layer(layout.num_layers, 0.0);
    double worst_slot = 0;
    for (const Seq& s : seqs) {
      const SequenceBlockTables* t = kv.Tables(s.id);
      for (int32_t hi = 0; hi < layout.heads_per_seq(); ++hi) {
        const HeadBlockTable& h = t->heads[hi];
        double num = 0, den = 0, mx = 0;
        std::vector<float> cs(kBs), gs(kBs);
        std::vector<int32_t> cp(kBs), gp(kBs);
        for (size_t bi = 0; bi < h.blocks.size(); ++bi) {
          const int32_t cnt = std::min<int32_t>(kBs, h.num_kvs - int32_t(bi) * kBs);
          cpu->slot_reader().ReadBlock(h.blocks[bi], cnt, cs.data(), cp.data());
          gpu->slot_reader().ReadBlock(h.blocks[bi], cnt, gs.data(), gp.data());
          for (int32_t i = 0; i < cnt; ++i) {
            ASSERT_EQ(cp[i], gp[i]) << phase << " seq " << s.id << " head " << hi;
            ASSERT_TRUE(std::isfinite(gs[i])) << phase << " seq " << s.id << " head " << hi;
            if (!s.scored) {
              ASSERT_EQ(gs[i], 0.0f) << phase << " unscored seq " << s.id;
              continue;
            }
            num += (double(gs[i]) - cs[i]) * (double(gs[i]) - cs[i]);
            den += double(cs[i]) * cs[i];
            mx = std::max(mx, std::fabs(double(cs[i])));
          }
        }
        if (!s.scored) continue;
        ASSERT_GT(den, 0) << phase << " seq " << s.id << " head " << hi << " has no scores";
        const double e = std::sqrt(num / den);
        per_layer[hi / layout.num_kv_heads] = std::max(per_layer[hi / layout.num_kv_heads], e);
        EXPECT_LE(e, hi < layout.num_kv_heads ? kScoreTol : kDeepScoreTol)
            << phase << " seq " << s.id << " head " << hi;
        (void)mx;
        worst_slot = std::max(worst_slot, e);
      }
    }
    std::string line;
    for (double e : per_layer) line += absl::StrCat(" ", e);
    std::printf("[ scores %s ] normwise rel error per layer (max over seqs, heads):%s\n", phase,
                line.c_str());
  };

  auto compare_plans = [&](const char* phase) {
    EvictionConstraints cons;
    cons.protected_window = 32;
    EvictionPlanner planner;
    int clear = 0, unclear = 0, unclear_diff = 0;
    for (const Seq& s : seqs) {
      if (!s.scored) continue;
      int64_t blocks = 0;
      for (const HeadBlockTable& h : kv.Tables(s.id)->heads) blocks += h.blocks.size();
      for (int64_t b : {1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377}) {
        if (b > blocks / 2) break;
        auto cp = kv.PlanEviction(s.id, cpu->slot_reader(), b, cons, &planner);
        ASSERT_TRUE(cp.ok()) << cp.status();
        if (cp->empty()) continue;
        bool stable = true;
        for (uint64_t seed = 1; seed <= 12 && stable; ++seed) {
          PerturbedReader pr(cpu->slot_reader(), 0.05, seed);
          auto pp = kv.PlanEviction(s.id, pr, b, cons, &planner);
          ASSERT_TRUE(pp.ok());
          stable = SamePlan(*cp, *pp);
        }
        auto gp = kv.PlanEviction(s.id, gpu->slot_reader(), b, cons, &planner);
        ASSERT_TRUE(gp.ok()) << gp.status();
        if (stable) {
          ++clear;
          EXPECT_TRUE(SamePlan(*cp, *gp))
              << phase << " seq " << s.id << " evicting " << b << " blocks: plans differ";
        } else {
          ++unclear;
          if (!SamePlan(*cp, *gp)) ++unclear_diff;
        }
      }
    }
    std::printf(
        "[ plans %s ] %d budgets with clear score gaps (all must match), %d near-tie "
        "budgets of which %d differ\n",
        phase, clear, unclear, unclear_diff);
    EXPECT_GT(clear, 0) << phase << ": no budget with a clear score gap was tested";
  };

  batch = make_batch(true);
  ForwardOutput co, go;
  ASSERT_TRUE(cpu->Forward(batch, &co).ok());
  ASSERT_TRUE(gpu->Forward(batch, &go).ok());
  compare_scores("prefill");
  compare_plans("prefill");
  for (int step = 0; step < 8; ++step) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i].tokens.push_back(
          Argmax(co.logits.data() + i * vocab, vocab));  // the CPU's greedy token for both
      ASSERT_TRUE(kv.Append(seqs[i].id, 1).ok());
    }
    batch = make_batch(false);
    ASSERT_TRUE(cpu->Forward(batch, &co).ok());
    ASSERT_TRUE(gpu->Forward(batch, &go).ok());
  }
  compare_scores("decode");
  compare_plans("decode");
}

// ---------------------------------------------------------------------------------------------
// Bad input.

TEST(CudaExecutorErrorsTest, BadInputReturnsStatus) {
  auto w = RefWeights();
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(CudaExecutor::Create(w, 64, 12).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaExecutor::Create(w, 0, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaExecutor::Create(nullptr, 64, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
  {
    ModelWeights big = *w;
    big.config.head_dim = 256;
    EXPECT_EQ(CudaExecutor::Create(std::make_shared<const ModelWeights>(std::move(big)), 64, 16)
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
  auto ex = MakeCuda(w, 64, 16);
  ASSERT_NE(ex, nullptr);
  TestBlockAllocator alloc(ex->layout(), 0);
  SequenceBlockTables t = alloc.NewSequence();
  alloc.Reserve(&t, 3);
  std::vector<int32_t> toks = {5, w->config.vocab_size, 7};
  ForwardBatch b;
  ForwardSequence s;
  s.tokens = toks;
  s.tables = &t;
  b.seqs.push_back(s);
  ForwardOutput out;
  absl::Status st = ex->Forward(b, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("tokens[1]"), std::string::npos) << st;
  toks[1] = 6;
  b.seqs[0].tables = nullptr;
  EXPECT_EQ(ex->Forward(b, &out).code(), absl::StatusCode::kInvalidArgument);
  b.seqs[0].tables = &t;
  SequenceBlockTables bad = t;
  bad.heads[3].blocks[0] = 64;  // outside the pool
  b.seqs[0].tables = &bad;
  EXPECT_EQ(ex->Forward(b, &out).code(), absl::StatusCode::kInvalidArgument);
  b.seqs[0].tables = &t;
  ASSERT_TRUE(ex->Forward(b, &out).ok());
  EXPECT_EQ(out.logits.size(), static_cast<size_t>(w->config.vocab_size));
  KvMove m;
  m.src_block = 0;
  m.dst_block = 64;
  std::vector<KvMove> moves = {m};
  EXPECT_EQ(ex->MoveKvs(moves).code(), absl::StatusCode::kInvalidArgument);
  moves[0].dst_block = 1;
  moves[0].dst_offset = 16;
  EXPECT_EQ(ex->MoveKvs(moves).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ex->ReadKvRow(64, 0, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ex->backend(), "cuda");
}

}  // namespace
}  // namespace kvc
