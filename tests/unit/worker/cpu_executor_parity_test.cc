// Logits parity of CpuExecutor with transformers (tests/fixtures/models, written by
// scripts/gpu/make_model_fixtures.py with transformers 5.17 in fp32, eager attention).
//
// Metric: for every logits row, max_i |ours_i - ref_i| / max_i |ref_i| (error relative to the
// row's largest logit); every row must be <= 1e-4. Greedy tokens (EOS ignored, 32 steps) must be
// identical. Covered per fixture and per block size (16 and 8): each prompt alone (all prompt
// positions), greedy decoding of each prompt alone, the three prompts (different lengths)
// prefilled and decoded together in one batch, prefill mixed with decode in one batch, chunked
// prefill, and decoding after the KVs were reordered inside their heads (compaction).
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/unit/worker/cpu_executor_test_util.h"
#include "worker/cpu_executor.h"

namespace kvc {
namespace {

using testing_util::Argmax;
using testing_util::TestBlockAllocator;

constexpr double kMaxRelError = 1e-4;
constexpr int kNumPrompts = 3;

struct PromptRef {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // [ids.size(), vocab]
  std::vector<int32_t> greedy;
  std::vector<float> greedy_logits;  // [greedy.size(), vocab]
};

std::vector<PromptRef> LoadReference(const std::string& dir) {
  std::vector<PromptRef> refs;
  auto file = SafetensorsFile::Open(dir + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return refs;
  for (int p = 0; p < kNumPrompts; ++p) {
    PromptRef r;
    auto get = [&](const std::string& what) {
      const TensorView* t = (*file)->Find(absl::StrCat("prompt_", p, ".", what));
      EXPECT_NE(t, nullptr) << what;
      return t;
    };
    r.ids = *ToInt32(*get("ids"));
    r.logits = *ToFloat32(*get("logits"));
    r.greedy = *ToInt32(*get("greedy_tokens"));
    r.greedy_logits = *ToFloat32(*get("greedy_logits"));
    refs.push_back(std::move(r));
  }
  return refs;
}

double RelError(const float* ours, const float* ref, int32_t n) {
  double max_ref = 0, max_diff = 0;
  for (int32_t i = 0; i < n; ++i) {
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
    max_diff = std::max(max_diff, std::fabs(double(ours[i]) - ref[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

struct ParityCase {
  const char* model;
  int32_t block_size;
};

class ParityTest : public ::testing::TestWithParam<ParityCase> {
 protected:
  void SetUp() override {
    const std::string dir = std::string("tests/fixtures/models/") + GetParam().model;
    auto w = LoadModel(dir);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = *w;
    refs_ = LoadReference(dir);
    ASSERT_EQ(refs_.size(), static_cast<size_t>(kNumPrompts));
    vocab_ = weights_->config.vocab_size;
    // Room for all prompts + 32 steps in every head, plus spare blocks.
    auto e = CpuExecutor::Create(weights_, 512, GetParam().block_size);
    ASSERT_TRUE(e.ok()) << e.status();
    exec_ = std::move(*e);
    alloc_ = std::make_unique<TestBlockAllocator>(exec_->layout(), /*seed=*/GetParam().block_size);
  }

  void TearDown() override {
    std::printf("[ parity ] %s block_size %d: max rel error %.3g over %lld rows\n",
                GetParam().model, GetParam().block_size, max_err_, static_cast<long long>(rows_));
  }

  void Check(const float* ours, const float* ref, const std::string& what) {
    const double e = RelError(ours, ref, vocab_);
    max_err_ = std::max(max_err_, e);
    ++rows_;
    EXPECT_LE(e, kMaxRelError) << what;
  }

  // One step over several sequences; returns the logits.
  std::vector<float> Step(std::vector<ForwardSequence> seqs) {
    ForwardBatch batch;
    batch.seqs = std::move(seqs);
    ForwardOutput out;
    absl::Status st = exec_->Forward(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(out.vocab_size, vocab_);
    return out.logits;
  }

  // Decodes `steps` greedy steps for the given sequences together, starting from `next`
  // (each sequence's first generated token) and checking each step against the reference.
  void DecodeTogether(const std::vector<int>& prompts, std::vector<SequenceBlockTables>* tables,
                      std::vector<int32_t> next, int first_step) {
    std::vector<int32_t> pos(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      pos[i] = static_cast<int32_t>(refs_[prompts[i]].ids.size()) + first_step - 1;
    }
    for (int step = first_step; step < 32; ++step) {
      std::vector<ForwardSequence> seqs(prompts.size());
      std::vector<std::vector<int32_t>> toks(prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        toks[i] = {next[i]};
        alloc_->Reserve(&(*tables)[i], 1);
        seqs[i].seq_id = prompts[i];
        seqs[i].tokens = toks[i];
        seqs[i].start_position = pos[i]++;
        seqs[i].tables = &(*tables)[i];
      }
      auto logits = Step(seqs);
      ASSERT_EQ(logits.size(), prompts.size() * vocab_);
      for (size_t i = 0; i < prompts.size(); ++i) {
        const PromptRef& r = refs_[prompts[i]];
        const float* row = logits.data() + i * vocab_;
        Check(row, r.greedy_logits.data() + step * vocab_,
              absl::StrCat("prompt ", prompts[i], " step ", step));
        next[i] = Argmax(row, vocab_);
        ASSERT_EQ(next[i], r.greedy[step]) << "prompt " << prompts[i] << " step " << step;
      }
    }
  }

  std::shared_ptr<const ModelWeights> weights_;
  std::vector<PromptRef> refs_;
  int32_t vocab_ = 0;
  std::unique_ptr<CpuExecutor> exec_;
  std::unique_ptr<TestBlockAllocator> alloc_;
  double max_err_ = 0;
  int64_t rows_ = 0;
};

TEST_P(ParityTest, PromptLogitsEveryPosition) {
  for (int p = 0; p < kNumPrompts; ++p) {
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

TEST_P(ParityTest, GreedyDecodeEachPromptAlone) {
  for (int p = 0; p < kNumPrompts; ++p) {
    const PromptRef& r = refs_[p];
    std::vector<SequenceBlockTables> tables = {alloc_->NewSequence()};
    alloc_->Reserve(&tables[0], static_cast<int32_t>(r.ids.size()));
    ForwardSequence s;
    s.seq_id = p;
    s.tokens = r.ids;
    s.tables = &tables[0];
    auto logits = Step({s});  // last position only
    ASSERT_EQ(logits.size(), static_cast<size_t>(vocab_));
    Check(logits.data(), r.greedy_logits.data(), absl::StrCat("prompt ", p, " step 0"));
    const int32_t first = Argmax(logits.data(), vocab_);
    ASSERT_EQ(first, r.greedy[0]);
    DecodeTogether({p}, &tables, {first}, 1);
    alloc_->Release(&tables[0]);
  }
}

TEST_P(ParityTest, ThreePromptsBatchedPrefillAndDecode) {
  std::vector<SequenceBlockTables> tables(kNumPrompts, alloc_->NewSequence());
  std::vector<ForwardSequence> seqs(kNumPrompts);
  for (int p = 0; p < kNumPrompts; ++p) {
    alloc_->Reserve(&tables[p], static_cast<int32_t>(refs_[p].ids.size()));
    seqs[p].seq_id = p;
    seqs[p].tokens = refs_[p].ids;
    seqs[p].tables = &tables[p];
  }
  auto logits = Step(seqs);
  ASSERT_EQ(logits.size(), static_cast<size_t>(kNumPrompts) * vocab_);
  std::vector<int32_t> next(kNumPrompts);
  for (int p = 0; p < kNumPrompts; ++p) {
    Check(logits.data() + p * vocab_, refs_[p].greedy_logits.data(),
          absl::StrCat("batched prompt ", p, " step 0"));
    next[p] = Argmax(logits.data() + p * vocab_, vocab_);
    ASSERT_EQ(next[p], refs_[p].greedy[0]);
  }
  DecodeTogether({0, 1, 2}, &tables, next, 1);
}

TEST_P(ParityTest, PrefillMixedWithDecodeAndChunkedPrefill) {
  // Step A: prompt 0 prefill. Step B: prompt 0 decodes while prompt 1 prefills and the first
  // chunk of prompt 2 (all logits) prefills. Step C: prompt 0 and 1 decode, prompt 2's second
  // chunk. Then all three decode together to the end.
  std::vector<SequenceBlockTables> tables(kNumPrompts, alloc_->NewSequence());
  const PromptRef &r0 = refs_[0], &r1 = refs_[1], &r2 = refs_[2];
  ASSERT_GT(r2.ids.size(), 12u);
  const int32_t chunk = static_cast<int32_t>(r2.ids.size()) / 2;

  alloc_->Reserve(&tables[0], static_cast<int32_t>(r0.ids.size()));
  ForwardSequence a;
  a.seq_id = 0;
  a.tokens = r0.ids;
  a.tables = &tables[0];
  auto la = Step({a});
  Check(la.data(), r0.greedy_logits.data(), "A prompt 0");
  std::vector<int32_t> t0 = {Argmax(la.data(), vocab_)};
  ASSERT_EQ(t0[0], r0.greedy[0]);

  alloc_->Reserve(&tables[0], 1);
  alloc_->Reserve(&tables[1], static_cast<int32_t>(r1.ids.size()));
  alloc_->Reserve(&tables[2], chunk);
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
  std::vector<int32_t> next = {Argmax(lb.data(), vocab_), Argmax(lb.data() + vocab_, vocab_), 0};
  ASSERT_EQ(next[0], r0.greedy[1]);
  ASSERT_EQ(next[1], r1.greedy[0]);

  alloc_->Reserve(&tables[0], 1);
  alloc_->Reserve(&tables[1], 1);
  alloc_->Reserve(&tables[2], static_cast<int32_t>(c2.size()));
  std::vector<int32_t> d0 = {next[0]}, d1 = {next[1]};
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
  const float* last = lc.data() + (2 + c2.size() - 1) * vocab_;
  next = {Argmax(lc.data(), vocab_), Argmax(lc.data() + vocab_, vocab_), Argmax(last, vocab_)};
  ASSERT_EQ(next[0], r0.greedy[2]);
  ASSERT_EQ(next[1], r1.greedy[1]);
  ASSERT_EQ(next[2], r2.greedy[0]);

  // Finish each sequence: they are at different steps, so decode them one at a time here
  // (DecodeTogether assumes a common step) — prompt 2 first, at step 1.
  std::vector<SequenceBlockTables> t2 = {tables[2]};
  DecodeTogether({2}, &t2, {next[2]}, 1);
  std::vector<SequenceBlockTables> t1 = {tables[1]};
  DecodeTogether({1}, &t1, {next[1]}, 2);
  std::vector<SequenceBlockTables> t0b = {tables[0]};
  DecodeTogether({0}, &t0b, {next[0]}, 3);
}

TEST_P(ParityTest, DecodeAfterKvsWereReorderedInTheirHeads) {
  // Prefill prompt 2, then reverse the slot order of every head with MoveKv (through a spare
  // block), as compaction would leave KVs out of position order. Decoding must still match.
  const PromptRef& r = refs_[2];
  std::vector<SequenceBlockTables> tables = {alloc_->NewSequence()};
  alloc_->Reserve(&tables[0], static_cast<int32_t>(r.ids.size()));
  ForwardSequence s;
  s.tokens = r.ids;
  s.tables = &tables[0];
  auto logits = Step({s});
  const int32_t first = Argmax(logits.data(), vocab_);
  ASSERT_EQ(first, r.greedy[0]);

  SequenceBlockTables spare_t = alloc_->NewSequence();
  alloc_->Reserve(&spare_t, 1);
  const int32_t spare = spare_t.heads[0].blocks[0];
  const int32_t bs = GetParam().block_size;
  int moved = 0;
  for (const HeadBlockTable& h : tables[0].heads) {
    for (int32_t i = 0, j = h.num_kvs - 1; i < j; ++i, --j) {
      const int32_t bi = h.blocks[i / bs], oi = i % bs, bj = h.blocks[j / bs], oj = j % bs;
      ASSERT_TRUE(exec_->MoveKv(bi, oi, spare, 0).ok());
      ASSERT_TRUE(exec_->MoveKv(bj, oj, bi, oi).ok());
      ASSERT_TRUE(exec_->MoveKv(spare, 0, bj, oj).ok());
      ++moved;
    }
    // Slot 0 now holds the last prompt position.
    ASSERT_EQ(exec_->Position(h.blocks[0], 0), static_cast<int32_t>(r.ids.size()) - 1);
  }
  ASSERT_GT(moved, 0);
  DecodeTogether({2}, &tables, {first}, 1);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ParityTest,
    ::testing::Values(ParityCase{"llama_gqa_llama3", 16}, ParityCase{"llama_gqa_llama3", 8},
                      ParityCase{"qwen2_qkv_bias", 16}, ParityCase{"qwen2_qkv_bias", 8},
                      ParityCase{"llama_tied", 16}, ParityCase{"llama_tied", 8}),
    [](const ::testing::TestParamInfo<ParityCase>& info) {
      return std::string(info.param.model) + "_bs" + std::to_string(info.param.block_size);
    });

}  // namespace
}  // namespace kvc
