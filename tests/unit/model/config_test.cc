// Tests of ModelConfig parsing: each family, both config.json dialects (transformers < 5 and
// >= 5), defaults, and errors that name the file and the field.
#include "model/config.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

// A Llama 3.1-style config.json (transformers 4 dialect).
constexpr char kLlama31[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "torch_dtype": "bfloat16", "hidden_act": "silu"
})";

constexpr char kMistral[] = R"({
  "architectures": ["MistralForCausalLM"], "model_type": "mistral",
  "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "sliding_window": null, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
  "torch_dtype": "bfloat16", "hidden_act": "silu"
})";

// Qwen2 in the transformers 5 dialect (rope_parameters, dtype), sliding window written but off.
constexpr char kQwen2[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
  "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
  "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
  "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "use_sliding_window": false, "sliding_window": 32768, "tie_word_embeddings": true,
  "bos_token_id": 151643, "eos_token_id": 151645, "dtype": "bfloat16", "hidden_act": "silu"
})";

TEST(ModelConfigTest, ParsesLlama31WithLlama3RopeScaling) {
  auto c = ModelConfig::FromJsonString(kLlama31, "llama31/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kLlama);
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_hidden_layers, 32);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 128);  // default hidden / heads
  EXPECT_EQ(c->num_queries_per_kv(), 4);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qkv_bias());
  EXPECT_FALSE(c->o_proj_bias());
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_THAT(c->eos_token_ids, ::testing::ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  // Llama 3.1 8B has 8.03B parameters.
  EXPECT_NEAR(c->NumParameters() / 1e9, 8.03, 0.01);
}

TEST(ModelConfigTest, ParsesMistral) {
  auto c = ModelConfig::FromJsonString(kMistral, "mistral");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kMistral);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_THAT(c->eos_token_ids, ::testing::ElementsAre(2));
  EXPECT_FALSE(c->qkv_bias());
}

TEST(ModelConfigTest, ParsesQwen2InTransformers5Dialect) {
  auto c = ModelConfig::FromJsonString(kQwen2, "qwen2");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kQwen2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->qkv_bias());       // Qwen2: always, attention_bias is not even written
  EXPECT_FALSE(c->o_proj_bias());   // never on o_proj
  EXPECT_EQ(c->sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  // Qwen2-0.5B: 494M parameters (tied).
  EXPECT_NEAR(c->NumParameters() / 1e6, 494.0, 1.0);
}

TEST(ModelConfigTest, Llama3ScalingInRopeParameters) {
  std::string json = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 20000.0, "factor": 4.0,
      "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 64},
    "attention_bias": true, "mlp_bias": true, "eos_token_id": 5})";
  auto c = ModelConfig::FromJsonString(json, "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 20000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 2.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(c->num_key_value_heads, 4);  // default = heads
  EXPECT_TRUE(c->qkv_bias());
  EXPECT_TRUE(c->o_proj_bias());
  EXPECT_TRUE(c->mlp_bias);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->torch_dtype, "float32");
}

TEST(ModelConfigTest, MissingRequiredFieldNamesSourceAndField) {
  std::string json = kMistral;
  json.replace(json.find("\"intermediate_size\": 14336,"), 27, "");
  auto c = ModelConfig::FromJsonString(json, "models/m/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("models/m/config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("'intermediate_size'"));
}

TEST(ModelConfigTest, RejectsUnknownRopeType) {
  std::string json = kLlama31;
  json.replace(json.find("\"llama3\""), 8, "\"yarn\"");
  auto c = ModelConfig::FromJsonString(json, "cfg");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("yarn"));
  EXPECT_THAT(c.status().message(), HasSubstr("rope_scaling.rope_type"));
}

TEST(ModelConfigTest, RejectsLlama3ScalingWithoutFactor) {
  std::string json = kLlama31;
  json.replace(json.find("\"factor\": 8.0,"), 14, "");
  auto c = ModelConfig::FromJsonString(json, "cfg");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("'rope_scaling.factor'"));
}

TEST(ModelConfigTest, RejectsOtherErrors) {
  struct Case {
    std::string from, to, expect;
  };
  const Case cases[] = {
      {"\"silu\"", "\"gelu\"", "hidden_act"},
      {"\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", "num_key_value_heads"},
      {"\"hidden_size\": 4096", "\"hidden_size\": -1", "hidden_size"},
      {"\"vocab_size\": 32000", "\"vocab_size\": \"big\"", "vocab_size"},
      {"MistralForCausalLM", "GPT2LMHeadModel", "GPT2LMHeadModel"},
      {"\"eos_token_id\": 2", "\"eos_token_id\": \"x\"", "eos_token_id"},
      {"\"eos_token_id\": 2", "\"eos_token_id\": 40000", "eos_token_id"},
      {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", "rms_norm_eps"},
  };
  for (const Case& k : cases) {
    std::string json = kMistral;
    const size_t at = json.find(k.from);
    ASSERT_NE(at, std::string::npos) << k.from;
    json.replace(at, k.from.size(), k.to);
    auto c = ModelConfig::FromJsonString(json, "cfg");
    ASSERT_FALSE(c.ok()) << k.to;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << k.to;
    EXPECT_THAT(c.status().message(), HasSubstr(k.expect)) << c.status();
  }
  auto c = ModelConfig::FromJsonString("{not json", "cfg");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("invalid JSON"));
}

TEST(ModelConfigTest, FromJsonFileNamesModelAfterDirectory) {
  auto c = ModelConfig::FromJsonFile("tests/fixtures/models/llama_gqa_llama3/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "llama_gqa_llama3");
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);

  auto missing = ModelConfig::FromJsonFile("tests/fixtures/models/nope/config.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope/config.json"));
}

TEST(ModelConfigTest, ParsesEveryFixture) {
  for (const char* name : {"llama_gqa_llama3", "qwen2_qkv_bias", "llama_tied"}) {
    auto c =
        ModelConfig::FromJsonFile(std::string("tests/fixtures/models/") + name + "/config.json");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->name, name);
  }
  auto q = ModelConfig::FromJsonFile("tests/fixtures/models/qwen2_qkv_bias/config.json");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->family, ModelFamily::kQwen2);
  EXPECT_THAT(q->eos_token_ids, ::testing::ElementsAre(1, 2));
  auto t = ModelConfig::FromJsonFile("tests/fixtures/models/llama_tied/config.json");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->tie_word_embeddings);
  EXPECT_TRUE(t->o_proj_bias());
  EXPECT_TRUE(t->mlp_bias);
}

}  // namespace
}  // namespace kvc
