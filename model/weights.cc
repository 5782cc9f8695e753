#include "model/weights.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc {
namespace {

std::string ShapeStr(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads tensor `name` of the expected shape into `out` as fp32.
absl::Status ReadTensor(const SafetensorsCheckpoint& ckpt, const std::string& name,
                        const std::vector<int64_t>& shape, std::vector<float>* out) {
  const TensorView* t = ckpt.Find(name);
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint '", ckpt.source(),
                                                   "': missing tensor '", name, "' (expected ",
                                                   ShapeStr(shape), ")"));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in '", t->file,
                                                   "': expected shape ", ShapeStr(shape), ", got ",
                                                   t->ShapeString()));
  }
  if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in '", t->file,
                                                   "': expected dtype F32, F16 or BF16, got ",
                                                   DTypeName(t->dtype)));
  }
  out->resize(t->numel());
  return CopyToFloat32(*t, std::span<float>(*out));
}

// splitmix64-driven normal draws (Box-Muller); deterministic across platforms.
class WeightRng {
 public:
  explicit WeightRng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1).
  double Uniform() {
    return (static_cast<double>(Next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u = Uniform(), v = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u));
    spare_ = r * std::sin(2.0 * M_PI * v);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * v);
  }

 private:
  uint64_t state_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

std::vector<float> RandomNormal(WeightRng& rng, int64_t n, double stddev) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.Normal() * stddev);
  return v;
}

std::vector<float> RandomNorm(WeightRng& rng, int64_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(0.6 + 0.8 * rng.Uniform());
  return v;
}

}  // namespace

absl::StatusOr<ModelWeights> ModelWeights::FromCheckpoint(const ModelConfig& config,
                                                          const SafetensorsCheckpoint& ckpt) {
  RETURN_IF_ERROR(config.Validate());
  const ModelConfig& c = config;
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), im = c.intermediate_size;
  ModelWeights w;
  w.config = config;
  RETURN_IF_ERROR(
      ReadTensor(ckpt, "model.embed_tokens.weight", {c.vocab_size, h}, &w.embed_tokens));
  RETURN_IF_ERROR(ReadTensor(ckpt, "model.norm.weight", {h}, &w.final_norm));
  if (!c.tie_word_embeddings) {
    RETURN_IF_ERROR(ReadTensor(ckpt, "lm_head.weight", {c.vocab_size, h}, &w.lm_head));
  }
  w.layers.resize(c.num_hidden_layers);
  for (int32_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "input_layernorm.weight", {h}, &l.input_norm));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "post_attention_layernorm.weight", {h}, &l.post_norm));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.q_proj.weight", {q, h}, &l.q_proj));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.k_proj.weight", {kv, h}, &l.k_proj));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.v_proj.weight", {kv, h}, &l.v_proj));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.o_proj.weight", {h, q}, &l.o_proj));
    if (c.qkv_bias()) {
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.q_proj.bias", {q}, &l.q_bias));
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.k_proj.bias", {kv}, &l.k_bias));
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.v_proj.bias", {kv}, &l.v_bias));
    }
    if (c.o_proj_bias()) {
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "self_attn.o_proj.bias", {h}, &l.o_bias));
    }
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.gate_proj.weight", {im, h}, &l.gate_proj));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.up_proj.weight", {im, h}, &l.up_proj));
    RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.down_proj.weight", {h, im}, &l.down_proj));
    if (c.mlp_bias) {
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.gate_proj.bias", {im}, &l.gate_bias));
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.up_proj.bias", {im}, &l.up_bias));
      RETURN_IF_ERROR(ReadTensor(ckpt, p + "mlp.down_proj.bias", {h}, &l.down_bias));
    }
  }
  return w;
}

absl::StatusOr<ModelWeights> ModelWeights::Random(const ModelConfig& config, uint64_t seed) {
  RETURN_IF_ERROR(config.Validate());
  const ModelConfig& c = config;
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), im = c.intermediate_size;
  WeightRng rng(seed);
  ModelWeights w;
  w.config = config;
  w.embed_tokens = RandomNormal(rng, c.vocab_size * h, 1.0);
  w.final_norm = RandomNorm(rng, h);
  if (!c.tie_word_embeddings) {
    w.lm_head = RandomNormal(rng, c.vocab_size * h, 1.0 / std::sqrt(double(h)));
  }
  w.layers.resize(c.num_hidden_layers);
  for (LayerWeights& l : w.layers) {
    l.input_norm = RandomNorm(rng, h);
    l.post_norm = RandomNorm(rng, h);
    l.q_proj = RandomNormal(rng, q * h, 1.0 / std::sqrt(double(h)));
    l.k_proj = RandomNormal(rng, kv * h, 1.0 / std::sqrt(double(h)));
    l.v_proj = RandomNormal(rng, kv * h, 1.0 / std::sqrt(double(h)));
    l.o_proj = RandomNormal(rng, h * q, 1.0 / std::sqrt(double(q)));
    if (c.qkv_bias()) {
      l.q_bias = RandomNormal(rng, q, 0.3);
      l.k_bias = RandomNormal(rng, kv, 0.3);
      l.v_bias = RandomNormal(rng, kv, 0.3);
    }
    if (c.o_proj_bias()) l.o_bias = RandomNormal(rng, h, 0.3);
    l.gate_proj = RandomNormal(rng, im * h, 1.0 / std::sqrt(double(h)));
    l.up_proj = RandomNormal(rng, im * h, 1.0 / std::sqrt(double(h)));
    l.down_proj = RandomNormal(rng, h * im, 1.0 / std::sqrt(double(im)));
    if (c.mlp_bias) {
      l.gate_bias = RandomNormal(rng, im, 0.3);
      l.up_bias = RandomNormal(rng, im, 0.3);
      l.down_bias = RandomNormal(rng, h, 0.3);
    }
  }
  return w;
}

absl::StatusOr<std::shared_ptr<const ModelWeights>> LoadModel(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", model_dir, "' does not exist"));
  }
  ASSIGN_OR_RETURN(ModelConfig config,
                   ModelConfig::FromJsonFile((fs::path(model_dir) / "config.json").string()));
  ASSIGN_OR_RETURN(auto ckpt, SafetensorsCheckpoint::Open(model_dir));
  ASSIGN_OR_RETURN(ModelWeights w, ModelWeights::FromCheckpoint(config, *ckpt));
  if (config.sliding_window > 0 && config.sliding_window < config.max_position_embeddings) {
    KVC_LOG(WARNING) << config.name << ": sliding_window " << config.sliding_window
                     << " is ignored; kvc runs full causal attention";
  }
  KVC_LOG(INFO) << "loaded " << config.DebugString() << " from " << ckpt->source();
  return std::make_shared<const ModelWeights>(std::move(w));
}

}  // namespace kvc
