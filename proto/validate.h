// Validation of the API's request messages, shared by kvc-router (first line of defence, before
// routing) and kvc-worker (defence in depth: the worker API is reachable on its own).
// Every error is INVALID_ARGUMENT and names the offending field by its proto path, e.g.
// "sampling.top_p: must be in (0, 1], got 1.5".
#ifndef KVC_PROTO_VALIDATE_H_
#define KVC_PROTO_VALIDATE_H_

#include "absl/status/status.h"
#include "kvc/v1/inference.pb.h"

namespace kvc {

// Upper bound for max_tokens regardless of context (catches "absurd" values early).
inline constexpr int32_t kMaxTokensLimit = 1 << 20;

// `prompt_tokens`: the prompt's length in tokens; `max_context`: the model's context. Checks
// temperature, top_p, top_k, max_tokens (>= 1 and prompt + max_tokens <= max_context), stop ids
// in [0, vocab_size).
absl::Status ValidateSampling(const v1::SamplingParams& s, int32_t prompt_tokens,
                              int32_t max_context, int32_t vocab_size);

// Checks the policy enum, the budget (rate >= 1 and finite; max_cache_tokens >= 1), and that
// windows are non-negative and observation_window >= 1.
absl::Status ValidateCompression(const v1::CompressionParams& c);

// Checks prompt token ids are in [0, vocab_size) and the prompt is non-empty and shorter than
// the context.
absl::Status ValidatePromptTokens(const google::protobuf::RepeatedField<int32_t>& ids,
                                  int32_t max_context, int32_t vocab_size);

}  // namespace kvc

#endif  // KVC_PROTO_VALIDATE_H_
