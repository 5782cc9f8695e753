// Tests of ModelWeights: loading the fixture models, shape / missing-tensor errors that name
// the tensor, and deterministic random weights.
#include "model/weights.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

constexpr char kFixtures[] = "tests/fixtures/models/";

TEST(WeightsTest, LoadsEveryFixture) {
  for (const char* name : {"llama_gqa_llama3", "qwen2_qkv_bias", "llama_tied"}) {
    auto w = LoadModel(std::string(kFixtures) + name);
    ASSERT_TRUE(w.ok()) << w.status();
    const ModelConfig& c = (*w)->config;
    EXPECT_EQ(c.name, name);
    EXPECT_EQ((*w)->embed_tokens.size(), static_cast<size_t>(c.vocab_size) * c.hidden_size);
    EXPECT_EQ((*w)->final_norm.size(), static_cast<size_t>(c.hidden_size));
    ASSERT_EQ((*w)->layers.size(), static_cast<size_t>(c.num_hidden_layers));
    for (const LayerWeights& l : (*w)->layers) {
      EXPECT_EQ(l.q_proj.size(), static_cast<size_t>(c.q_size()) * c.hidden_size);
      EXPECT_EQ(l.k_proj.size(), static_cast<size_t>(c.kv_size()) * c.hidden_size);
      EXPECT_EQ(l.down_proj.size(), static_cast<size_t>(c.hidden_size) * c.intermediate_size);
      EXPECT_EQ(l.q_bias.size(), c.qkv_bias() ? static_cast<size_t>(c.q_size()) : 0u);
      EXPECT_EQ(l.k_bias.size(), c.qkv_bias() ? static_cast<size_t>(c.kv_size()) : 0u);
      EXPECT_EQ(l.o_bias.size(), c.o_proj_bias() ? static_cast<size_t>(c.hidden_size) : 0u);
      EXPECT_EQ(l.gate_bias.size(), c.mlp_bias ? static_cast<size_t>(c.intermediate_size) : 0u);
    }
    if (c.tie_word_embeddings) {
      EXPECT_TRUE((*w)->lm_head.empty());
      EXPECT_EQ((*w)->lm_head_data(), (*w)->embed_tokens.data());
    } else {
      EXPECT_EQ((*w)->lm_head.size(), static_cast<size_t>(c.vocab_size) * c.hidden_size);
      EXPECT_EQ((*w)->lm_head_data(), (*w)->lm_head.data());
    }
  }
}

TEST(WeightsTest, ValuesMatchTheCheckpoint) {
  auto w = LoadModel(std::string(kFixtures) + "qwen2_qkv_bias");
  ASSERT_TRUE(w.ok()) << w.status();
  auto ckpt = SafetensorsCheckpoint::Open(std::string(kFixtures) + "qwen2_qkv_bias");
  ASSERT_TRUE(ckpt.ok());
  auto k_bias = ToFloat32(*(*ckpt)->Find("model.layers.1.self_attn.k_proj.bias"));
  ASSERT_TRUE(k_bias.ok());
  EXPECT_EQ((*w)->layers[1].k_bias, *k_bias);
  auto down = ToFloat32(*(*ckpt)->Find("model.layers.0.mlp.down_proj.weight"));
  ASSERT_TRUE(down.ok());
  EXPECT_EQ((*w)->layers[0].down_proj, *down);
}

class WeightsErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = ModelConfig::FromJsonFile(std::string(kFixtures) + "llama_gqa_llama3/config.json");
    ASSERT_TRUE(c.ok()) << c.status();
    config_ = *c;
    auto ckpt = SafetensorsCheckpoint::Open(std::string(kFixtures) + "llama_gqa_llama3");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = std::move(*ckpt);
  }
  ModelConfig config_;
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
};

TEST_F(WeightsErrorTest, ShapeMismatchNamesTensorAndShapes) {
  config_.intermediate_size = 128;  // the checkpoint has 160
  auto w = ModelWeights::FromCheckpoint(config_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_THAT(w.status().message(), HasSubstr("expected shape [128, 64], got [160, 64]"));
}

TEST_F(WeightsErrorTest, MissingTensorIsNamed) {
  config_.num_hidden_layers = 4;  // the checkpoint has 3
  auto w = ModelWeights::FromCheckpoint(config_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("missing tensor 'model.layers.3."));

  ModelConfig biased = config_;
  biased.num_hidden_layers = 3;
  biased.attention_bias = true;
  w = ModelWeights::FromCheckpoint(biased, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("'model.layers.0.self_attn.q_proj.bias'"));
}

TEST_F(WeightsErrorTest, MissingDirectoryAndInvalidConfig) {
  auto w = LoadModel("tests/fixtures/models/does_not_exist");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  config_.num_key_value_heads = 3;
  auto r = ModelWeights::Random(config_, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("num_key_value_heads"));
}

TEST_F(WeightsErrorTest, RandomWeightsAreDeterministicAndShaped) {
  auto a = ModelWeights::Random(config_, 42);
  auto b = ModelWeights::Random(config_, 42);
  auto c = ModelWeights::Random(config_, 43);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->embed_tokens, b->embed_tokens);
  EXPECT_EQ(a->layers[2].down_proj, b->layers[2].down_proj);
  EXPECT_NE(a->layers[2].down_proj, c->layers[2].down_proj);
  EXPECT_EQ(a->lm_head.size(), static_cast<size_t>(config_.vocab_size) * config_.hidden_size);
  EXPECT_EQ(a->layers[0].v_proj.size(), static_cast<size_t>(config_.kv_size()) * 64);
  EXPECT_TRUE(a->layers[0].q_bias.empty());
  // N(0, 1/in) linear weights: the sample variance of q_proj is about 1/64.
  double ss = 0;
  for (float x : a->layers[0].q_proj) ss += double(x) * x;
  EXPECT_NEAR(ss / a->layers[0].q_proj.size(), 1.0 / 64, 0.1 / 64);
  for (float x : a->final_norm) {
    EXPECT_GE(x, 0.6f);
    EXPECT_LE(x, 1.4f);
  }
}

}  // namespace
}  // namespace kvc
