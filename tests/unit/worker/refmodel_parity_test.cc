// The trained reference model (models/kvc-ref) in our CPU engine against transformers 5.17
// (tests/fixtures/kvc-ref/reference.safetensors, written by
// scripts/gpu/make_refmodel_reference.py): our tokenizer gives HF's ids for the prompts, our logits
// match within 1e-4 relative (per row, max |diff| / max |ref|), and 32 greedy steps give the same
// tokens.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "tests/unit/worker/cpu_executor_test_util.h"
#include "worker/cpu_executor.h"

namespace kvc {
namespace {

double RelError(const float* ours, const float* ref, int32_t n) {
  double max_ref = 0, max_diff = 0;
  for (int32_t i = 0; i < n; ++i) {
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
    max_diff = std::max(max_diff, std::fabs(double(ours[i]) - ref[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

TEST(RefModelParityTest, TokenizerLogitsAndGreedyTokensMatchTransformers) {
  auto weights = LoadModel("models/kvc-ref");
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto tok = Tokenizer::FromFile("models/kvc-ref/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ref = SafetensorsFile::Open("tests/fixtures/kvc-ref/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  const int32_t vocab = (*weights)->config.vocab_size;
  for (int p = 0; p < 3; ++p) {
    SCOPED_TRACE(absl::StrCat("prompt ", p));
    auto get = [&](const std::string& what) {
      const TensorView* t = (*ref)->Find(absl::StrCat("prompt_", p, ".", what));
      EXPECT_NE(t, nullptr) << what;
      return t;
    };
    std::vector<int32_t> ids = *ToInt32(*get("ids"));
    std::vector<int32_t> positions = *ToInt32(*get("logit_positions"));
    std::vector<float> logits = *ToFloat32(*get("logits"));
    std::vector<int32_t> greedy = *ToInt32(*get("greedy_tokens"));
    std::vector<float> greedy_logits = *ToFloat32(*get("greedy_logits"));
    const std::string text = (*ref)->metadata().at(absl::StrCat("prompt_", p, ".text"));
    auto ours_ids = (*tok)->Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(ours_ids.ok());
    EXPECT_EQ(*ours_ids, ids) << "tokenizer differs from HF";

    auto ex = CpuExecutor::Create(*weights, 2048, 16);
    ASSERT_TRUE(ex.ok()) << ex.status();
    testing_util::TestBlockAllocator alloc((*ex)->layout(), 3);
    SequenceBlockTables tables = alloc.NewSequence();
    alloc.Reserve(&tables, static_cast<int32_t>(ids.size()));
    ForwardBatch batch;
    ForwardSequence fs;
    fs.seq_id = 1;
    fs.tokens = ids;
    fs.tables = &tables;
    fs.all_logits = true;
    batch.seqs.push_back(fs);
    ForwardOutput out;
    ASSERT_TRUE((*ex)->Forward(batch, &out).ok());
    for (size_t i = 0; i < positions.size(); ++i) {
      EXPECT_LE(RelError(out.logits.data() + int64_t(positions[i]) * vocab,
                         logits.data() + int64_t(i) * vocab, vocab),
                1e-4)
          << "position " << positions[i];
    }
    std::vector<int32_t> seq = ids;
    int32_t next = ArgmaxToken(
        std::span<const float>(out.logits.data() + int64_t(ids.size() - 1) * vocab, vocab));
    for (size_t step = 0; step < greedy.size(); ++step) {
      ASSERT_EQ(next, greedy[step]) << "greedy step " << step;
      seq.push_back(next);
      alloc.Reserve(&tables, 1);
      ForwardBatch db;
      ForwardSequence d;
      d.seq_id = 1;
      d.tokens = std::span<const int32_t>(seq).subspan(seq.size() - 1, 1);
      d.start_position = static_cast<int32_t>(seq.size()) - 1;
      d.tables = &tables;
      db.seqs.push_back(d);
      ASSERT_TRUE((*ex)->Forward(db, &out).ok());
      if (step + 1 < greedy_logits.size() / static_cast<size_t>(vocab)) {
        EXPECT_LE(RelError(out.logits.data(), greedy_logits.data() + (step + 1) * vocab, vocab),
                  1e-4)
            << "greedy step " << step + 1;
      }
      next = ArgmaxToken(out.logits);
    }
  }
}

}  // namespace
}  // namespace kvc
