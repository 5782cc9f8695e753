// CpuExecutor: the fp32 CPU backend of Executor (the reference implementation; what CI runs).
//
// Forward() runs a Llama-family model over a batch that may mix prefill (or prefill chunks) and
// decode sequences. All tokens of the batch go through each matmul together (decode rows of
// several sequences share one pass over the weights); attention runs per sequence over its
// per-head block tables with cpu::PagedAttention.
//
// Ownership: shares the (immutable) weights; owns the KV storage, indexed by block id:
//   K, V      [num_blocks, block_size, head_dim] fp32
//   score     [num_blocks, block_size] fp32      (set to 0 when a KV is appended)
//   position  [num_blocks, block_size] int32     (token position of the KV)
// Block ids and tables belong to the KvManager; Forward() writes new token i of a sequence
// into logical slot (num_kvs - tokens.size() + i) of every (layer, kv_head). The storage
// accessors below serve compaction (MoveKv) and tests.
//
// Thread-safety: not thread-safe; one engine thread drives it. Internally the kernels use the
// shared CPU thread pool (cpu::ThreadPool::Default()).
#ifndef KVC_WORKER_CPU_EXECUTOR_H_
#define KVC_WORKER_CPU_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/weights.h"
#include "worker/executor.h"

namespace kvc {

class CpuExecutor : public Executor {
 public:
  // INVALID_ARGUMENT when num_blocks < 1, block_size < 1 or the storage would not be
  // addressable; RESOURCE_EXHAUSTED when it cannot be allocated.
  static absl::StatusOr<std::unique_ptr<CpuExecutor>> Create(
      std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size);

  const ModelConfig& config() const override { return weights_->config; }
  const KvLayout& layout() const override { return layout_; }
  std::string backend() const override { return "cpu"; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override;
  const KvSlotReader& slot_reader() const override { return slot_reader_; }
  absl::Status MoveKvs(std::span<const KvMove> moves) override;

  const ModelWeights& weights() const { return *weights_; }

  // ---- KV storage access (block id, offset in block) ----
  // Copies K, V, score and position of one KV to another slot (compaction). INVALID_ARGUMENT
  // on an out-of-range block or offset; src == dst is a no-op.
  absl::Status MoveKv(int32_t src_block, int32_t src_offset, int32_t dst_block, int32_t dst_offset);
  // head_dim floats. The slot must be in range (checked).
  std::span<const float> Key(int32_t block, int32_t offset) const;
  std::span<const float> Value(int32_t block, int32_t offset) const;
  float Score(int32_t block, int32_t offset) const;
  int32_t Position(int32_t block, int32_t offset) const;
  void SetScore(int32_t block, int32_t offset, float score);
  // Whole arrays, [num_blocks * block_size (* head_dim)], for kernels that work in place.
  std::span<float> mutable_scores() { return std::span<float>(scores_); }
  std::span<const float> k_cache() const { return std::span<const float>(k_cache_); }
  std::span<const float> v_cache() const { return std::span<const float>(v_cache_); }
  std::span<const int32_t> positions() const { return std::span<const int32_t>(positions_); }

 private:
  CpuExecutor(std::shared_ptr<const ModelWeights> weights, KvLayout layout);
  int64_t SlotIndex(int32_t block, int32_t offset) const;

  std::shared_ptr<const ModelWeights> weights_;
  KvLayout layout_;
  std::vector<float> inv_freq_;  // [head_dim / 2]

  std::vector<float> k_cache_;
  std::vector<float> v_cache_;
  std::vector<float> scores_;
  std::vector<int32_t> positions_;
  FlatKvSlotReader slot_reader_;  // over scores_ / positions_ (never resized after Create)
  std::vector<std::vector<float>> probs_;  // per sequence: attention probabilities for scores

  // Activations, reused across steps (grown as needed).
  std::vector<float> x_, normed_, qkv_, attn_, mlp_, act_, logits_in_;
  std::vector<int32_t> ids_, token_pos_;
};

}  // namespace kvc

#endif  // KVC_WORKER_CPU_EXECUTOR_H_
