// Executor: runs the model on one backend (CPU reference, CUDA) over the per-head paged KV cache.
//
// Ownership: the executor owns the weights and the KV *storage* (K, V, per-KV score and token
// position, indexed by block id). The KvManager owns block ids and block tables; before each
// Forward() the engine reserves room in the KvManager for the tokens being processed, so the
// tables passed in already count the new tokens. The executor writes the K/V of new token i of
// a sequence into logical slot (num_kvs - tokens.size() + i) of every (layer, kv_head).
//
// Thread-safety: an executor is driven by one engine thread; it is not thread-safe.
#ifndef KVC_WORKER_EXECUTOR_H_
#define KVC_WORKER_EXECUTOR_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"
#include "model/config.h"

namespace kvc {

// One sequence's slice of a forward pass.
struct ForwardSequence {
  int64_t seq_id = 0;
  // Tokens processed this step: the prompt (or a chunk of it) at prefill, one token at decode.
  std::span<const int32_t> tokens;
  // Absolute position of tokens[0] (RoPE position; also stored beside each KV).
  int32_t start_position = 0;
  // Block tables after room for `tokens` was reserved. Not owned; valid during Forward().
  const SequenceBlockTables* tables = nullptr;
  // Return logits of every token in `tokens` (tests, scoring) rather than only the last one.
  bool all_logits = false;
  // KV-Compress scores (reference/kvcompress-spec.md §2, kernels/cpu/kv_scores.h): the last
  // `score_queries` tokens of `tokens` add their squared attention probabilities, summed over
  // each GQA group, to the scores of every KV they see. Prefill: the observation window w,
  // max-pooled along keys (score_pool); decode: 1, not pooled. 0 = collect nothing.
  int32_t score_queries = 0;
  bool score_pool = false;
  // Sampling in the executor (Executor::samples_tokens()): when `sample` is set, Forward() draws
  // this sequence's next token from its last logits row into ForwardOutput::tokens, with the
  // CPU reference's rule (kernels/cpu/sampling.h, SampleTokenWithUniform) and the uniform
  // CounterUniform(sample_seed, sample_counter): a counter-based draw, so a request's tokens
  // depend only on its seed and how many tokens it generated (preemption does not change them).
  bool sample = false;
  SamplingOptions sampling;
  uint64_t sample_seed = 0;
  uint64_t sample_counter = 0;
};

struct ForwardBatch {
  std::vector<ForwardSequence> seqs;
  // Max-pooling kernel for pooled scores (odd; 0 or 1 = off).
  int32_t score_pool_kernel = 7;
  // false: logits are not returned (ForwardOutput::logits stays empty) unless a sequence asks for
  // all_logits; only the sampled tokens come back (one device->host copy on the CUDA backend).
  // Valid only when every sequence has `sample` set.
  bool return_logits = true;
};

struct ForwardOutput {
  // Concatenated logits, row-major [rows, vocab_size]: for each sequence in batch order,
  // tokens.size() rows if all_logits else 1 row (its last token).
  std::vector<float> logits;
  int32_t vocab_size = 0;
  // One entry per sequence in batch order when sampling ran in the executor: the sampled token of
  // a sequence with `sample` set, -1 for the others.
  std::vector<int32_t> tokens;
};

// Checks a batch against the model and the KV layout before any executor writes anything:
// non-empty tokens in the vocabulary, positions that fit int32, score settings, and block tables
// holding exactly ceil(num_kvs / b) in-range blocks per (layer, kv_head) with room reserved for the
// new tokens. INVALID_ARGUMENT naming "batch.seqs[i] (seq_id X): ..." otherwise. Shared by every
// executor so they accept and reject exactly the same batches.
// check_block_ids = false skips the per-block range check (O(total blocks) per call) for an
// executor that checks the ids it actually reads itself (the CUDA executor's table mirror checks
// each id once, when it is uploaded).
absl::Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& config,
                                  const KvLayout& layout, bool check_block_ids = true);

// RoPE inverse frequencies of `config` (rope_theta, llama3 scaling) for `head_dim` dimensions:
// head_dim / 2 entries, shared by every executor.
std::vector<float> RopeInvFreqFor(const ModelConfig& config, int32_t head_dim);

class Executor {
 public:
  virtual ~Executor() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const KvLayout& layout() const = 0;
  // "cpu" or "cuda".
  virtual std::string backend() const = 0;

  // Runs the model over the batch (prefill and decode sequences may be mixed), appending each
  // new token's K/V to its heads. Returns INVALID_ARGUMENT on inconsistent tables.
  virtual absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) = 0;

  // Per-KV scores and token positions, read by the eviction planner. Valid for the executor's
  // lifetime; reflects every Forward()/MoveKvs() that returned.
  virtual const KvSlotReader& slot_reader() const = 0;
  // Compaction: copies K, V, score and position of each move's source slot into its
  // destination, in order (a plan's moves never overlap). Must run before the blocks freed by
  // the plan are reused.
  virtual absl::Status MoveKvs(std::span<const KvMove> moves) = 0;

  // The engine ended or preempted sequence `seq_id` (its blocks went back to the pool): drop any
  // per-sequence state (e.g. a device mirror of its block tables). A later Forward() may reuse the
  // id. Optional: executors without such state ignore it.
  virtual void ForgetSequence(int64_t seq_id) {}

  // True when Forward() honours ForwardSequence::sample (the engine then samples there and skips
  // the logits download); false: the engine samples on the host from the logits.
  virtual bool samples_tokens() const { return false; }

  // Device-side KV-Compress (policy kvcompress, the global rule of kvmanager/eviction_plan.h):
  // selects and compacts one sequence's KVs where the scores live, and returns the blocks freed
  // per head index (L·H entries, what PlanFromBlockCounts takes); only these counts come back to
  // the host. The result must equal EvictionPlanner::Plan on the same scores followed by its
  // moves. The caller then applies the counts-only plan to the KvManager before any block is
  // reused. UNIMPLEMENTED where evicts_on_device() is false.
  virtual bool evicts_on_device() const { return false; }
  virtual absl::StatusOr<std::vector<int32_t>> EvictOnDevice(
      const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
      const EvictionConstraints& constraints) {
    return absl::UnimplementedError("EvictOnDevice: not supported by the " + backend() +
                                    " executor");
  }
};

}  // namespace kvc

#endif  // KVC_WORKER_EXECUTOR_H_
