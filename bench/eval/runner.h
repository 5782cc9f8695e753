// Generation and perplexity drivers of the quality evaluation (bench/eval, docs/quality.md):
// greedy generation of many prompts under many (policy, compression rate) variants on the CPU
// backend, and teacher-forced perplexity with continual compression.
//
// Two generation drivers, with the same results:
//   * RunWithEngine: every (prompt, variant) is an EngineRequest to one in-process Engine
//     (CpuExecutor + KvManager), all submitted at once so the engine batches them; the KV pool
//     is sized so that no request is ever preempted (a recompute would change the scores).
//   * RunSharedPrefill: prefills each prompt ONCE, then forks its KV cache (K, V, score and
//     position of every slot) into one sequence per variant and decodes all variants of a wave
//     of prompts in one batch. It drives CpuExecutor + KvManager + CompressionPolicy itself in
//     the engine's exact step order: after the prefill, sample, then compress (trigger
//     prefill); each decode step compresses over-budget sequences (continual), appends one
//     token, runs the forward pass (decode queries add their scores), samples, and finishes on
//     stop ids / EOS / max tokens. CpuExecutor's matmuls are batch-invariant, so a variant's
//     tokens equal the Engine's (tests/unit/eval/runner_test.cc checks it). The prefill math is
//     shared, which makes a policy x 7 rates sweep ~7x cheaper.
// RunPerplexity uses the shared-prefill scheme on text windows: prefill a prefix, then feed the
// following tokens one at a time (teacher forcing) while compressing continually, and average
// the next-token negative log-likelihood.
//
// Thread-safety: the functions are reentrant but use the shared CPU thread pool; run one at a
// time. Ownership: callers keep the weights alive for the call.
#ifndef KVC_BENCH_EVAL_RUNNER_H_
#define KVC_BENCH_EVAL_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvmanager/compression_policy.h"
#include "model/weights.h"

namespace kvc::eval {

// One cache configuration. rate 1 (or policy none) is the full, uncompressed cache.
struct Variant {
  CompressionPolicyKind policy = CompressionPolicyKind::kNone;
  double rate = 1.0;
  bool full() const { return policy == CompressionPolicyKind::kNone || rate <= 1.0; }
};
// "full" or "<policy>@<rate>".
std::string VariantName(const Variant& v);
// The inverse of VariantName. INVALID_ARGUMENT naming the text otherwise.
absl::StatusOr<Variant> ParseVariantName(std::string_view name);

struct RunSettings {
  int32_t block_size = 16;
  int32_t protected_window = 32;    // P: the last P tokens are never evicted
  int32_t observation_window = 32;  // w: last prompt queries that score the prompt's KVs
  int32_t sink_tokens = 0;
  int32_t min_kvs_per_head = 0;
  bool continual = true;      // re-compress to the budget while decoding
  bool decode_scores = true;  // decode queries add their squared probabilities
  int32_t score_pool_kernel = 7;
  int32_t wave_prompts = 4;      // shared prefill: prompts whose variants decode together
  int32_t engine_max_seqs = 32;  // engine driver: running sequences at most
};

// One prompt to generate from.
struct GenerationJob {
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 24;
  std::vector<int32_t> stop_token_ids;  // finish after generating one of these (included)
  bool ignore_eos = false;
  uint64_t seed = 0;  // the `random` policy's per-sequence seed derives from it
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stop id included
  int64_t kvs_held = 0;         // at the end, over all heads
  int64_t kvs_uncompressed = 0;
  int32_t compressions = 0;
  int32_t preemptions = 0;  // engine driver only; 0 is required for valid results
};

// Called after each finished prompt (all its variants): (prompts done, prompts in all).
using ProgressFn = std::function<void(int64_t, int64_t)>;

// results[i][v]: job i under variant v. INVALID_ARGUMENT for empty inputs, bad settings or a
// prompt longer than the model's context.
absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunWithEngine(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& settings,
    const ProgressFn& progress = nullptr);

absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunSharedPrefill(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& settings,
    const ProgressFn& progress = nullptr);

struct PerplexityResult {
  Variant variant;
  int64_t tokens = 0;        // scored tokens
  double mean_nll = 0;       // nats per token
  double perplexity = 0;     // exp(mean_nll)
  double kept_fraction = 0;  // mean over windows of kvs_held / kvs_uncompressed at the end
};

// Each window is prefix_len + score_len tokens (the first is normally <|bos|>). The prefix is
// prefilled; token prefix_len is scored from the prefill logits and each later token from a
// decode step over the (continually compressed) cache. One result per variant, in order.
absl::StatusOr<std::vector<PerplexityResult>> RunPerplexity(
    std::shared_ptr<const ModelWeights> weights, const std::vector<std::vector<int32_t>>& windows,
    int32_t prefix_len, const std::vector<Variant>& variants, const RunSettings& settings,
    const ProgressFn& progress = nullptr);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_RUNNER_H_
