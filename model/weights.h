// ModelWeights: host fp32 copies of the weights of a Llama-family model (Llama, Mistral, Qwen2)
// for the CPU backend, loaded from a Hugging Face checkpoint or drawn at random.
//
// Names read (HF layout): model.embed_tokens.weight, model.norm.weight, lm_head.weight (unless
// tie_word_embeddings), and per layer i under model.layers.{i}.: input_layernorm.weight,
// post_attention_layernorm.weight, self_attn.{q,k,v,o}_proj.weight (+ .bias on q/k/v when
// config.qkv_bias(), on o when config.o_proj_bias()), mlp.{gate,up,down}_proj.weight (+ .bias
// when mlp_bias). Every tensor's shape is checked against the config; a missing or mis-shaped
// tensor is INVALID_ARGUMENT naming the tensor and the expected vs actual shape. Tensors the
// model does not use (e.g. rotary_emb.inv_freq) are ignored.
//
// Linear weights keep the HF layout [out_features, in_features] row-major (y = x W^T + b).
// A ModelWeights is immutable after construction; share it across threads freely.
#ifndef KVC_MODEL_WEIGHTS_H_
#define KVC_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace kvc {

struct LayerWeights {
  std::vector<float> input_norm;                      // [hidden]
  std::vector<float> q_proj;                          // [heads*head_dim, hidden]
  std::vector<float> k_proj;                          // [kv_heads*head_dim, hidden]
  std::vector<float> v_proj;                          // [kv_heads*head_dim, hidden]
  std::vector<float> o_proj;                          // [hidden, heads*head_dim]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty when the model has none
  std::vector<float> post_norm;                       // [hidden]
  std::vector<float> gate_proj;                       // [intermediate, hidden]
  std::vector<float> up_proj;                         // [intermediate, hidden]
  std::vector<float> down_proj;                       // [hidden, intermediate]
  std::vector<float> gate_bias, up_bias, down_bias;   // empty unless mlp_bias
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden]; empty when tied

  // The LM head matrix [vocab, hidden] (embed_tokens when tied).
  const float* lm_head_data() const {
    return config.tie_word_embeddings ? embed_tokens.data() : lm_head.data();
  }

  // Reads and checks every tensor of `config` from `ckpt` (any of F32 / F16 / BF16).
  static absl::StatusOr<ModelWeights> FromCheckpoint(const ModelConfig& config,
                                                     const SafetensorsCheckpoint& ckpt);
  // Deterministic random weights for benchmarks (`--random-weights`): N(0, 1) embeddings,
  // N(0, 1/in) linear weights, norms in [0.6, 1.4], biases N(0, 0.3^2). Same seed, same weights.
  static absl::StatusOr<ModelWeights> Random(const ModelConfig& config, uint64_t seed);
};

// Loads a Hugging Face model directory: config.json + model.safetensors or
// model.safetensors.index.json with its shards. The config's `name` is the directory basename.
absl::StatusOr<std::shared_ptr<const ModelWeights>> LoadModel(const std::string& model_dir);

}  // namespace kvc

#endif  // KVC_MODEL_WEIGHTS_H_
