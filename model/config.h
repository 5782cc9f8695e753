// ModelConfig: the architecture of a Llama-family causal LM, parsed from a Hugging Face
// config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
//
// Both config.json dialects are accepted: transformers < 5 (top-level `rope_theta` +
// `rope_scaling`, `torch_dtype`) and transformers >= 5 (`rope_parameters` holding rope_type,
// rope_theta and the scaling fields; `dtype`). RoPE scaling: none/"default" and "llama3"; any
// other type is rejected with INVALID_ARGUMENT. hidden_act must be "silu".
//
// A ModelConfig is a plain value (copyable); all methods are const and thread-safe.
#ifndef KVC_MODEL_CONFIG_H_
#define KVC_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc {

enum class ModelFamily { kLlama, kMistral, kQwen2 };

// "llama", "mistral", "qwen2".
const char* ModelFamilyName(ModelFamily family);

// RoPE frequency scaling (transformers' `rope_scaling` / `rope_parameters`).
struct RopeScaling {
  enum class Type { kNone, kLlama3 };
  Type type = Type::kNone;
  // llama3 fields (Llama 3.1 / 3.2 defaults shown).
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  // Directory basename of the model (FromJsonFile), or the `source` given to FromJsonString.
  std::string name;
  ModelFamily family = ModelFamily::kLlama;
  // architectures[0] when present, else derived from model_type.
  std::string architecture;

  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_hidden_layers = 0;
  int32_t num_attention_heads = 0;
  int32_t num_key_value_heads = 0;  // default: num_attention_heads
  int32_t head_dim = 0;             // default: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // As written in config.json (Llama/Mistral: bias on q, k, v and o). Qwen2 ignores the field:
  // q/k/v always have a bias and o_proj never has. Use qkv_bias() / o_proj_bias().
  bool attention_bias = false;
  bool mlp_bias = false;                // bias on gate, up and down (Llama only)
  int32_t bos_token_id = -1;            // -1: none
  std::vector<int32_t> eos_token_ids;   // config.json's eos_token_id (int or list); may be empty
  std::string torch_dtype = "float32";  // `torch_dtype` or `dtype`: the checkpoint's dtype
  std::string hidden_act = "silu";
  // Sliding-window attention size (0 = none). Stored for the engine to refuse or warn: the
  // executors implement full causal attention only.
  int32_t sliding_window = 0;

  // Parses config.json at `path`; `name` becomes the basename of its directory.
  static absl::StatusOr<ModelConfig> FromJsonFile(const std::string& path);
  // Parses a config.json text. `source` names it in error messages (and becomes `name`).
  static absl::StatusOr<ModelConfig> FromJsonString(std::string_view json, std::string_view source);

  // Positive sizes, hidden = heads * head_dim is NOT required (Mistral/Qwen allow otherwise),
  // heads divisible by kv heads, even head_dim, rope fields sane. Called by the parsers.
  absl::Status Validate() const;

  bool qkv_bias() const { return family == ModelFamily::kQwen2 || attention_bias; }
  bool o_proj_bias() const { return family != ModelFamily::kQwen2 && attention_bias; }
  // Query heads per KV head (the GQA group size).
  int32_t num_queries_per_kv() const { return num_attention_heads / num_key_value_heads; }
  int32_t q_size() const { return num_attention_heads * head_dim; }
  int32_t kv_size() const { return num_key_value_heads * head_dim; }
  // Number of parameters (tied LM head counted once).
  int64_t NumParameters() const;
  // One line: "llama_tied (llama): 2 layers, hidden 64, 4/4 heads x 16, vocab 320, ...".
  std::string DebugString() const;
};

}  // namespace kvc

#endif  // KVC_MODEL_CONFIG_H_
