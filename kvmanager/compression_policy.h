// KV-cache compression policies behind one interface, so that the quality evaluation can compare
// them at EQUAL MEMORY: the budget helpers (compression_budget.h) say how many blocks B a sequence
// must free now, and a policy only decides WHICH blocks. Every policy returns an EvictionPlan in
// the planner's format (per-head k, evicted slots, compaction moves, freed tail blocks), so
// KvManager::ApplyEviction and the executor's move code work unchanged. Every policy respects the
// EvictionConstraints (protected window P, sinks S, per-head minimum m), never evicts a KV whose
// score is NaN or +inf, and leaves every compressed head holding only full blocks.
//
// Policies (docs/design/eviction.md, "Compression policies"):
//   none        never evicts (an empty plan).
//   kvcompress  KV-Compress: the B cheapest (head, j) blocks over all L·H heads (EvictionPlanner).
//   snapkv      same scores, uniform budget per head: blocks are taken from whichever head holds
//               the most (water-filling), so all heads end as equal as the constraints allow;
//               within a head, its lowest-scored (k-1)·b + r KVs go.
//   pyramidkv   same scores and per-head rule, but the heads' shares follow PyramidKV's layer
//               schedule (weights decreasing linearly with depth, beta = 20, PyramidLayerWeights);
//               uniform across the heads of a layer.
//   streaming   StreamingLLM: ignores scores; keeps the sinks (constraints.sink_tokens, or
//               CompressionPolicyOptions::streaming_sink_tokens when that is 0) and the most
//               recent KVs: within a head the oldest non-sink positions go; uniform per head.
//   random      the kvcompress global block rule with each score replaced by a deterministic hash
//               of (seq_seed, position, head index): a baseline, reproducible per sequence.
// Each frees exactly min(B, what the constraints allow) blocks (plan.blocks_freed).
//
// Ownership and thread-safety: a policy object keeps scratch buffers between calls and is NOT
// thread-safe; use one per engine thread. The free functions are reentrant.
#ifndef KVC_KVMANAGER_COMPRESSION_POLICY_H_
#define KVC_KVMANAGER_COMPRESSION_POLICY_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"
#include "kvmanager/kv_manager.h"

namespace kvc {

enum class CompressionPolicyKind { kNone, kKvCompress, kSnapKv, kPyramidKv, kStreaming, kRandom };

// "none", "kvcompress", "snapkv", "pyramidkv", "streaming", "random".
std::string_view CompressionPolicyName(CompressionPolicyKind kind);
// The inverse of CompressionPolicyName (exact, lower case). INVALID_ARGUMENT listing the valid
// names otherwise.
absl::StatusOr<CompressionPolicyKind> ParseCompressionPolicy(std::string_view name);

struct CompressionPolicyOptions {
  // PyramidKV's beta: the top layer gets 1/beta of the average per-layer budget. >= 1, <= 10000.
  int32_t pyramid_beta = 20;
  // StreamingLLM's sinks when the constraints give none (sink_tokens == 0). >= 0.
  int32_t streaming_sink_tokens = 4;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

class CompressionPolicy {
 public:
  virtual ~CompressionPolicy() = default;
  virtual CompressionPolicyKind kind() const = 0;
  // Plans freeing `evict_blocks` blocks of one sequence (may free fewer when constraints bind).
  // num_tokens: the sequence's token count; seq_seed: per-sequence seed (only `random` uses it).
  // INVALID_ARGUMENT for negative arguments or tables inconsistent with the layout (as
  // EvictionPlanner::Plan). Pure: nothing but the policy's scratch changes.
  virtual absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout,
                                            const SequenceBlockTables& tables,
                                            const KvSlotReader& reader, int64_t num_tokens,
                                            int64_t evict_blocks,
                                            const EvictionConstraints& constraints,
                                            uint64_t seq_seed) = 0;
};

// REQUIRES: options.Validate().ok() (checked).
std::unique_ptr<CompressionPolicy> MakeCompressionPolicy(CompressionPolicyKind kind,
                                                         const CompressionPolicyOptions& options);
std::unique_ptr<CompressionPolicy> MakeCompressionPolicy(CompressionPolicyKind kind);

// Plans with `policy` for sequence `seq_id` of `kv`, from its current tables and token count.
// Engine thread only (uses KvManager::Tables(); see kv_manager.h). NOT_FOUND if unknown.
absl::StatusOr<EvictionPlan> PlanSequenceEviction(const KvManager& kv, int64_t seq_id,
                                                  const KvSlotReader& reader, int64_t evict_blocks,
                                                  const EvictionConstraints& constraints,
                                                  uint64_t seq_seed, CompressionPolicy& policy);

// --- Building blocks (exposed for tests and for other allocators) ---

// Weighted water-filling of a block budget over heads. Freeing a block from head h while it holds
// c blocks has priority c / weights[h]; the result takes the evict_blocks highest-priority
// (head, block) pairs, ties to the lower head index, with at most max_blocks[h] from head h.
// Priorities fall as a head shrinks, so this is the greedy "take from the head furthest above its
// share" and returns min(evict_blocks, sum(max_blocks)) blocks in all. Afterwards, for any head h
// that gave a block and any head g that could still give one: kept_g·w_h <= (kept_h + 1)·w_g.
// With equal weights every head ends as equal as possible (differences <= 1 where unclamped).
// Sizes must match; 0 <= max_blocks[h] <= held_blocks[h]; 1 <= weights[h] < 2^31 (checked).
// O((L·H + evict_blocks)·log(L·H)).
std::vector<int32_t> AllocateBlocksProportional(std::span<const int32_t> held_blocks,
                                                std::span<const int32_t> max_blocks,
                                                std::span<const int64_t> weights,
                                                int64_t evict_blocks);

// PyramidKV's per-layer shares (Cai et al. 2024, KVCache-Factory pyramidkv_utils.py): with an
// average per-layer budget k, the top layer keeps k/beta, the bottom layer 2k - k/beta, and the
// layers in between follow the arithmetic sequence. Scaled to integers:
// w_l = (L-1) + (2·beta - 2)·(L-1-l); {1} for a single layer. So the bottom layer keeps
// (2·beta - 1)x the top layer (39x at beta = 20). REQUIRES num_layers >= 1, beta >= 1.
std::vector<int64_t> PyramidLayerWeights(int32_t num_layers, int32_t beta);

// The `random` policy's score of the KV at `position` in head index `head_index`: a SplitMix64
// hash of (seed, position, head_index) mapped to [0, 1).
float RandomEvictionScore(uint64_t seed, int32_t position, int32_t head_index);

}  // namespace kvc

#endif  // KVC_KVMANAGER_COMPRESSION_POLICY_H_
