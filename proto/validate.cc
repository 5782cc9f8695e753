#include "proto/validate.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvc {
namespace {
absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}
}  // namespace

absl::Status ValidateSampling(const v1::SamplingParams& s, int32_t prompt_tokens,
                              int32_t max_context, int32_t vocab_size) {
  if (s.has_temperature()) {
    float t = s.temperature();
    if (!std::isfinite(t) || t < 0 || t > 100) {
      return Invalid("sampling.temperature", absl::StrCat("must be in [0, 100], got ", t));
    }
  }
  if (s.has_top_p()) {
    float p = s.top_p();
    if (!std::isfinite(p) || p <= 0 || p > 1) {
      return Invalid("sampling.top_p", absl::StrCat("must be in (0, 1], got ", p));
    }
  }
  if (s.has_top_k() && s.top_k() < 0) {
    return Invalid("sampling.top_k", absl::StrCat("must be >= 0 (0 = off), got ", s.top_k()));
  }
  if (s.has_max_tokens()) {
    int32_t m = s.max_tokens();
    if (m < 1 || m > kMaxTokensLimit) {
      return Invalid("sampling.max_tokens",
                     absl::StrCat("must be in [1, ", kMaxTokensLimit, "], got ", m));
    }
    if (static_cast<int64_t>(prompt_tokens) + m > max_context) {
      return Invalid("sampling.max_tokens",
                     absl::StrCat("prompt (", prompt_tokens, " tokens) + max_tokens (", m,
                                  ") exceeds the model's context of ", max_context, " tokens"));
    }
  }
  for (int i = 0; i < s.stop_token_ids_size(); ++i) {
    int32_t id = s.stop_token_ids(i);
    if (id < 0 || id >= vocab_size) {
      return Invalid(absl::StrCat("sampling.stop_token_ids[", i, "]"),
                     absl::StrCat("must be in [0, ", vocab_size, "), got ", id));
    }
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).empty()) {
      return Invalid(absl::StrCat("sampling.stop[", i, "]"), "must not be empty");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCompression(const v1::CompressionParams& c) {
  if (!v1::CompressionPolicy_IsValid(c.policy())) {
    return Invalid("compression.policy", absl::StrCat("unknown policy ", c.policy()));
  }
  switch (c.budget_case()) {
    case v1::CompressionParams::kCompressionRate: {
      float r = c.compression_rate();
      if (!std::isfinite(r) || r < 1) {
        return Invalid("compression.compression_rate", absl::StrCat("must be >= 1, got ", r));
      }
      break;
    }
    case v1::CompressionParams::kMaxCacheTokens:
      if (c.max_cache_tokens() < 1) {
        return Invalid("compression.max_cache_tokens",
                       absl::StrCat("must be >= 1, got ", c.max_cache_tokens()));
      }
      break;
    case v1::CompressionParams::BUDGET_NOT_SET:
      break;
  }
  if (c.has_protected_window() && c.protected_window() < 0) {
    return Invalid("compression.protected_window",
                   absl::StrCat("must be >= 0, got ", c.protected_window()));
  }
  if (c.has_sink_tokens() && c.sink_tokens() < 0) {
    return Invalid("compression.sink_tokens", absl::StrCat("must be >= 0, got ", c.sink_tokens()));
  }
  if (c.has_min_kvs_per_head() && c.min_kvs_per_head() < 0) {
    return Invalid("compression.min_kvs_per_head",
                   absl::StrCat("must be >= 0, got ", c.min_kvs_per_head()));
  }
  if (c.has_observation_window() && c.observation_window() < 1) {
    return Invalid("compression.observation_window",
                   absl::StrCat("must be >= 1, got ", c.observation_window()));
  }
  return absl::OkStatus();
}

absl::Status ValidatePromptTokens(const google::protobuf::RepeatedField<int32_t>& ids,
                                  int32_t max_context, int32_t vocab_size) {
  if (ids.empty()) return Invalid("prompt", "must not be empty");
  if (ids.size() >= max_context) {
    return Invalid("prompt", absl::StrCat(ids.size(),
                                          " tokens leave no room to generate in the "
                                          "model's context of ",
                                          max_context, " tokens"));
  }
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return Invalid(absl::StrCat("prompt_token_ids[", i, "]"),
                     absl::StrCat("must be in [0, ", vocab_size, "), got ", ids[i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc
