#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvc {
namespace {

using Json = nlohmann::json;

// Reads fields of one JSON object, turning every problem into INVALID_ARGUMENT that names the
// source and the field.
class FieldReader {
 public:
  FieldReader(const Json& obj, absl::string_view source, std::string prefix = "")
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  bool Has(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

  absl::Status Error(const char* key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", prefix_, key, "' ", what));
  }

  absl::StatusOr<int64_t> Int(const char* key) const {
    if (!Has(key)) return Error(key, "is missing (required)");
    const Json& v = obj_.at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        return static_cast<int64_t>(d);
      }
    }
    return Error(key, absl::StrCat("must be an integer, got ", v.dump()));
  }
  absl::StatusOr<int64_t> Int(const char* key, int64_t def) const {
    if (!Has(key)) return def;
    return Int(key);
  }
  absl::StatusOr<int32_t> Int32(const char* key) const {
    ASSIGN_OR_RETURN(int64_t v, Int(key));
    return CheckInt32(key, v);
  }
  absl::StatusOr<int32_t> Int32(const char* key, int32_t def) const {
    ASSIGN_OR_RETURN(int64_t v, Int(key, def));
    return CheckInt32(key, v);
  }
  absl::StatusOr<double> Double(const char* key) const {
    if (!Has(key)) return Error(key, "is missing (required)");
    const Json& v = obj_.at(key);
    if (!v.is_number()) return Error(key, absl::StrCat("must be a number, got ", v.dump()));
    return v.get<double>();
  }
  absl::StatusOr<double> Double(const char* key, double def) const {
    if (!Has(key)) return def;
    return Double(key);
  }
  absl::StatusOr<bool> Bool(const char* key, bool def) const {
    if (!Has(key)) return def;
    const Json& v = obj_.at(key);
    if (!v.is_boolean()) return Error(key, absl::StrCat("must be true or false, got ", v.dump()));
    return v.get<bool>();
  }
  absl::StatusOr<std::string> String(const char* key, std::string def) const {
    if (!Has(key)) return def;
    const Json& v = obj_.at(key);
    if (!v.is_string()) return Error(key, absl::StrCat("must be a string, got ", v.dump()));
    return v.get<std::string>();
  }

 private:
  absl::StatusOr<int32_t> CheckInt32(const char* key, int64_t v) const {
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
      return Error(key, absl::StrCat("is out of range: ", v));
    }
    return static_cast<int32_t>(v);
  }

  const Json& obj_;
  absl::string_view source_;
  std::string prefix_;
};

absl::StatusOr<ModelFamily> ParseFamily(const Json& j, absl::string_view source,
                                        std::string* architecture) {
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    arch = j["architectures"][0].get<std::string>();
  }
  std::string model_type;
  if (j.contains("model_type") && j["model_type"].is_string()) {
    model_type = j["model_type"].get<std::string>();
  }
  struct Known {
    const char* arch;
    const char* model_type;
    ModelFamily family;
  };
  static constexpr Known kKnown[] = {
      {"LlamaForCausalLM", "llama", ModelFamily::kLlama},
      {"MistralForCausalLM", "mistral", ModelFamily::kMistral},
      {"Qwen2ForCausalLM", "qwen2", ModelFamily::kQwen2},
  };
  for (const Known& k : kKnown) {
    if ((!arch.empty() && arch == k.arch) || (arch.empty() && model_type == k.model_type)) {
      *architecture = k.arch;
      return k.family;
    }
  }
  if (arch.empty() && model_type.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": field 'architectures' (or 'model_type') is missing (required); supported: "
                     "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": unsupported architecture '", arch.empty() ? model_type : arch,
                   "' (field 'architectures'); supported: LlamaForCausalLM, MistralForCausalLM, "
                   "Qwen2ForCausalLM"));
}

// Reads rope_theta and the scaling. `j` is the whole config; the scaling lives either in
// `rope_parameters` (transformers >= 5) or in `rope_scaling` (older), rope_theta in either.
absl::Status ParseRope(const Json& j, absl::string_view source, ModelConfig* c) {
  FieldReader top(j, source);
  const Json* params = nullptr;
  std::string field;
  if (top.Has("rope_parameters")) {
    params = &j["rope_parameters"];
    field = "rope_parameters";
  } else if (top.Has("rope_scaling")) {
    params = &j["rope_scaling"];
    field = "rope_scaling";
  }
  ASSIGN_OR_RETURN(c->rope_theta, top.Double("rope_theta", 10000.0));
  if (params == nullptr) return absl::OkStatus();
  if (!params->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field '", field, "' must be an object or null"));
  }
  FieldReader r(*params, source, field + ".");
  if (r.Has("rope_theta")) {
    ASSIGN_OR_RETURN(c->rope_theta, r.Double("rope_theta"));
  }
  std::string type;
  if (r.Has("rope_type")) {
    ASSIGN_OR_RETURN(type, r.String("rope_type", ""));
  } else if (r.Has("type")) {
    ASSIGN_OR_RETURN(type, r.String("type", ""));
  } else {
    type = "default";
  }
  if (type == "default") {
    c->rope_scaling = RopeScaling{};
    return absl::OkStatus();
  }
  if (type != "llama3") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field '", field, ".rope_type' has unsupported RoPE scaling type '",
                     type, "'; supported: default (none), llama3"));
  }
  RopeScaling s;
  s.type = RopeScaling::Type::kLlama3;
  ASSIGN_OR_RETURN(s.factor, r.Double("factor"));
  ASSIGN_OR_RETURN(s.low_freq_factor, r.Double("low_freq_factor"));
  ASSIGN_OR_RETURN(s.high_freq_factor, r.Double("high_freq_factor"));
  if (r.Has("original_max_position_embeddings")) {
    ASSIGN_OR_RETURN(s.original_max_position_embeddings, r.Int("original_max_position_embeddings"));
  } else {
    ASSIGN_OR_RETURN(s.original_max_position_embeddings,
                     top.Int("original_max_position_embeddings"));
  }
  c->rope_scaling = s;
  return absl::OkStatus();
}

absl::Status ParseEos(const Json& j, absl::string_view source, ModelConfig* c) {
  c->eos_token_ids.clear();
  if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) return absl::OkStatus();
  const Json& v = j["eos_token_id"];
  auto bad = [&]() {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": field 'eos_token_id' must be an integer or a list of integers, got ", v.dump()));
  };
  if (v.is_number_integer()) {
    c->eos_token_ids.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const Json& e : v) {
      if (!e.is_number_integer()) return bad();
      c->eos_token_ids.push_back(e.get<int32_t>());
    }
  } else {
    return bad();
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> Parse(const Json& j, absl::string_view source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": config is not a JSON object"));
  }
  ModelConfig c;
  c.name = std::string(source);
  ASSIGN_OR_RETURN(c.family, ParseFamily(j, source, &c.architecture));
  FieldReader r(j, source);
  ASSIGN_OR_RETURN(c.vocab_size, r.Int32("vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, r.Int32("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, r.Int32("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_hidden_layers, r.Int32("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_attention_heads, r.Int32("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_key_value_heads, r.Int32("num_key_value_heads", c.num_attention_heads));
  if (c.num_attention_heads <= 0) {
    return r.Error("num_attention_heads",
                   absl::StrCat("must be positive, got ", c.num_attention_heads));
  }
  ASSIGN_OR_RETURN(c.head_dim, r.Int32("head_dim", c.hidden_size / c.num_attention_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings"));
  ASSIGN_OR_RETURN(double eps, r.Double("rms_norm_eps", 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);
  RETURN_IF_ERROR(ParseRope(j, source, &c));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.attention_bias, r.Bool("attention_bias", false));
  ASSIGN_OR_RETURN(c.mlp_bias, r.Bool("mlp_bias", false));
  if (c.family == ModelFamily::kQwen2 && c.mlp_bias) {
    return r.Error("mlp_bias", "is not supported for Qwen2");
  }
  ASSIGN_OR_RETURN(c.bos_token_id, r.Int32("bos_token_id", -1));
  RETURN_IF_ERROR(ParseEos(j, source, &c));
  if (r.Has("torch_dtype")) {
    ASSIGN_OR_RETURN(c.torch_dtype, r.String("torch_dtype", ""));
  } else {
    ASSIGN_OR_RETURN(c.torch_dtype, r.String("dtype", "float32"));
  }
  ASSIGN_OR_RETURN(c.hidden_act, r.String("hidden_act", "silu"));
  if (c.hidden_act != "silu") {
    return r.Error("hidden_act", absl::StrCat("must be \"silu\", got \"", c.hidden_act, "\""));
  }
  // Qwen2 writes sliding_window even when use_sliding_window is false; it only applies then.
  ASSIGN_OR_RETURN(bool use_sliding, r.Bool("use_sliding_window", c.family != ModelFamily::kQwen2));
  if (use_sliding && r.Has("sliding_window")) {
    ASSIGN_OR_RETURN(c.sliding_window, r.Int32("sliding_window"));
  }
  RETURN_IF_ERROR(Annotate(c.Validate(), std::string(source)));
  return c;
}

}  // namespace

const char* ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kMistral:
      return "mistral";
    case ModelFamily::kQwen2:
      return "qwen2";
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ModelConfig::FromJsonString(std::string_view json,
                                                        std::string_view source) {
  const std::string src(source);
  Json j;
  try {
    j = Json::parse(json.begin(), json.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": invalid JSON: ", e.what()));
  }
  try {
    return Parse(j, src);
  } catch (const Json::exception& e) {  // e.g. an integer too large for int32_t
    return absl::InvalidArgumentError(absl::StrCat(src, ": ", e.what()));
  }
}

absl::StatusOr<ModelConfig> ModelConfig::FromJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read '", path, "'"));
  ASSIGN_OR_RETURN(ModelConfig c, FromJsonString(ss.str(), path));
  std::filesystem::path p = std::filesystem::absolute(path).lexically_normal();
  std::string dir = p.parent_path().filename().string();
  c.name = dir.empty() ? p.stem().string() : dir;
  return c;
}

absl::Status ModelConfig::Validate() const {
  auto bad = [](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("field '", field, "' ", what));
  };
  struct Positive {
    const char* name;
    int64_t value;
  };
  for (const Positive& p : {Positive{"vocab_size", vocab_size},
                            {"hidden_size", hidden_size},
                            {"intermediate_size", intermediate_size},
                            {"num_hidden_layers", num_hidden_layers},
                            {"num_attention_heads", num_attention_heads},
                            {"num_key_value_heads", num_key_value_heads},
                            {"head_dim", head_dim},
                            {"max_position_embeddings", max_position_embeddings}}) {
    if (p.value <= 0) return bad(p.name, absl::StrCat("must be positive, got ", p.value));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return bad("num_key_value_heads",
               absl::StrCat("(", num_key_value_heads, ") must divide num_attention_heads (",
                            num_attention_heads, ")"));
  }
  if (head_dim % 2 != 0) return bad("head_dim", absl::StrCat("must be even, got ", head_dim));
  if (!(rms_norm_eps > 0.0f) || !std::isfinite(rms_norm_eps)) {
    return bad("rms_norm_eps", absl::StrCat("must be positive, got ", rms_norm_eps));
  }
  if (!(rope_theta > 1.0) || !std::isfinite(rope_theta)) {
    return bad("rope_theta", absl::StrCat("must be > 1, got ", rope_theta));
  }
  if (rope_scaling.type == RopeScaling::Type::kLlama3) {
    if (!(rope_scaling.factor >= 1.0)) {
      return bad("rope_scaling.factor", absl::StrCat("must be >= 1, got ", rope_scaling.factor));
    }
    if (!(rope_scaling.low_freq_factor > 0.0) ||
        !(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor)) {
      return bad(
          "rope_scaling.high_freq_factor",
          absl::StrCat("must exceed low_freq_factor > 0, got ", rope_scaling.high_freq_factor,
                       " and ", rope_scaling.low_freq_factor));
    }
    if (rope_scaling.original_max_position_embeddings <= 0) {
      return bad("rope_scaling.original_max_position_embeddings", "must be positive");
    }
  }
  for (int32_t id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return bad("eos_token_id",
                 absl::StrCat(id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  if (bos_token_id >= vocab_size) {
    return bad("bos_token_id", absl::StrCat(bos_token_id, " is outside the vocabulary"));
  }
  if (sliding_window < 0) return bad("sliding_window", "must not be negative");
  return absl::OkStatus();
}

int64_t ModelConfig::NumParameters() const {
  const int64_t h = hidden_size;
  int64_t per_layer = 2 * h;                                     // two norms
  per_layer += h * q_size() + 2 * h * kv_size() + q_size() * h;  // q, k, v, o
  if (qkv_bias()) per_layer += q_size() + 2 * kv_size();
  if (o_proj_bias()) per_layer += h;
  per_layer += 3 * h * intermediate_size;
  if (mlp_bias) per_layer += 2 * intermediate_size + h;
  int64_t total = per_layer * num_hidden_layers + h;  // + final norm
  total += static_cast<int64_t>(vocab_size) * h * (tie_word_embeddings ? 1 : 2);
  return total;
}

std::string ModelConfig::DebugString() const {
  std::string rope = absl::StrFormat("rope_theta %g", rope_theta);
  if (rope_scaling.type == RopeScaling::Type::kLlama3) {
    absl::StrAppendFormat(&rope, " llama3(factor %g, low %g, high %g, original %d)",
                          rope_scaling.factor, rope_scaling.low_freq_factor,
                          rope_scaling.high_freq_factor,
                          rope_scaling.original_max_position_embeddings);
  }
  return absl::StrFormat(
      "%s (%s): %d layers, hidden %d, %d/%d heads x %d, intermediate %d, vocab %d, max_pos %d, "
      "%s, tied %d, qkv_bias %d, o_bias %d, mlp_bias %d, %.2fM params",
      name, ModelFamilyName(family), num_hidden_layers, hidden_size, num_attention_heads,
      num_key_value_heads, head_dim, intermediate_size, vocab_size, max_position_embeddings, rope,
      tie_word_embeddings, qkv_bias(), o_proj_bias(), mlp_bias, NumParameters() / 1e6);
}

}  // namespace kvc
