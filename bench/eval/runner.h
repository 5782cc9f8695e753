// Generation and perplexity drivers of the quality evaluation (bench/eval, docs/quality.md):
// greedy generation of many prompts under many (policy, compression rate) variants, and
// teacher-forced perplexity with continual compression, on the CPU backend (CpuExecutor, fp32)
// or, when kvc is built with CUDA, the CUDA backend (CudaExecutor, bf16). Both drivers use only
// the Executor interface (worker/executor.h), so they run on either backend.
//
// Two generation drivers, with the same results:
//   * RunWithEngine: every (prompt, variant) is an EngineRequest to one in-process Engine
//     (executor + KvManager), all submitted at once so the engine batches them; the KV pool
//     is sized so that no request is ever preempted (a recompute would change the scores).
//   * RunSharedPrefill: prefills each prompt ONCE, then forks its KV cache (K, V, score and
//     position of every slot, copied with Executor::MoveKvs; on CUDA by default re-prefilled,
//     which is cheaper there: RunSettings::fork) into one sequence per variant and
//     decodes all variants of a wave of prompts in one batch. It drives executor + KvManager +
//     CompressionPolicy itself in the engine's exact step order: after the prefill, sample, then
//     compress (trigger prefill); each decode step compresses over-budget sequences
//     (continual), appends one token, runs the forward pass (decode queries add their scores),
//     samples, and finishes on stop ids / EOS / max tokens. CpuExecutor's matmuls are
//     batch-invariant, so on the CPU a variant's tokens equal the Engine's
//     (tests/unit/eval/runner_test.cc checks it). The prefill math is shared, which makes a
//     policy x 7 rates sweep ~7x cheaper. On CUDA the results are the CUDA executor's (bf16;
//     cuBLASLt may pick other kernels for other batch shapes, so the two drivers can differ on
//     near-ties there).
// RunPerplexity uses the shared-prefill scheme on text windows: prefill a prefix, then feed the
// following tokens one at a time (teacher forcing) while compressing continually, and average
// the next-token negative log-likelihood.
//
// Slot mirror (RunSettings::slot_cache): the eviction planners read every slot's score and
// position through Executor::slot_reader(); on CUDA each block read is two synchronous
// device->host copies. The shared driver can keep an exact host mirror of those arrays instead:
// a slot is re-read from the executor only after a Forward() may have changed it (every slot of a
// sequence that collected scores, the new slots of the others), MoveKvs() moves are replayed on
// the mirror, the stale blocks of every sequence about to compress are fetched at once before
// planning (one KvSlotReader::Prefetch: one gather and copy on CUDA), and a copied fork copies the
// mirror of its base. kVerify also compares every mirrored read with the executor and
// fails the run (INTERNAL) on any difference.
//
// Thread-safety: the functions are reentrant but use the shared CPU thread pool (CPU) or one
// device (CUDA); run one at a time. Ownership: callers keep the weights alive for the call.
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

enum class Backend { kCpu, kCuda };
// "cpu" or "cuda".
std::string_view BackendName(Backend b);
// The inverse of BackendName. INVALID_ARGUMENT naming the text otherwise.
absl::StatusOr<Backend> ParseBackend(std::string_view name);
// True when this build has the CUDA executor (kvc configured with CUDA).
bool CudaBackendBuilt();
// "NVIDIA H100 80GB HBM3"-style name of CUDA device `device`. UNIMPLEMENTED without CUDA,
// UNAVAILABLE when there is no such device.
absl::StatusOr<std::string> CudaDeviceName(int32_t device);

// kAuto: the mirror on CUDA (where slot reads are device copies), none on the CPU.
enum class SlotCache { kAuto, kOff, kOn, kVerify };
// How the shared driver gives each variant the prompt's KV cache. kCopy: slot-for-slot copies of
// the base (Executor::MoveKvs); kReprefill: each variant prefills the prompt itself (as the engine
// does), and takes its first token from its own logits. kAuto: kCopy on the CPU (a prefill costs
// seconds there), kReprefill on CUDA (a 4k prefill of kvc-ref takes ~5 ms, a 65k-slot copy ~30 ms).
enum class ForkMode { kAuto, kCopy, kReprefill };

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
  Backend backend = Backend::kCpu;
  int32_t cuda_device = 0;
  SlotCache slot_cache = SlotCache::kAuto;  // shared driver and perplexity only
  int32_t slot_read_threads = 1;            // parallel executor reads of stale mirror blocks
  ForkMode fork = ForkMode::kAuto;          // shared driver and perplexity only
};

// Where a shared-driver or perplexity run spent its time (filled when a RunStats* is passed).
struct RunStats {
  double prefill_seconds = 0;   // prefill forward passes (and the first token)
  double fork_seconds = 0;      // KV copies into the variants' sequences
  double compress_seconds = 0;  // budget, slot reads, planning, KvManager and executor moves
  double decode_seconds = 0;    // decode forward passes
  int64_t forward_calls = 0;
  int64_t prefills = 0;
  int64_t reprefill_logits_differ = 0;  // kReprefill: prefills whose logits differ from the base's
  int64_t compressions = 0;             // plans applied
  int64_t slot_block_reads = 0;         // blocks read through Executor::slot_reader()
  int64_t slot_prefetches = 0;          // bulk KvSlotReader::Prefetch calls before those reads
  int64_t slot_single_block_reads = 0;  // blocks read without a prefetch (device copies each)
  int64_t mirror_block_hits = 0;        // block reads served by the mirror
  int64_t mirror_mismatches = 0;        // kVerify: mirrored reads that differed (must be 0)
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
// prompt longer than the model's context; UNIMPLEMENTED for the CUDA backend in a build without
// it; the executor's errors (e.g. UNAVAILABLE without a device, RESOURCE_EXHAUSTED).
absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunWithEngine(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& settings,
    const ProgressFn& progress = nullptr);

absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunSharedPrefill(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& settings,
    const ProgressFn& progress = nullptr, RunStats* stats = nullptr);

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
    const ProgressFn& progress = nullptr, RunStats* stats = nullptr);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_RUNNER_H_
