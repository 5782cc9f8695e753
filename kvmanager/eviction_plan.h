// KV-Compress eviction planning for ONE sequence: which KVs of which (layer, kv_head) to evict so
// that a requested number of blocks empties out, and the compaction moves that refill the holes.
// Pure host code: it reads per-KV scores and positions through KvSlotReader (the storage lives in
// the executor), reads the sequence's block tables, and returns an EvictionPlan. Nothing is
// mutated; KvManager::ApplyEviction() applies a plan to the metadata and the executor performs
// the moves. Rule, budgets and tie-breaks: docs/design/eviction.md.
//
// The rule (KV-Compress, reference/kvcompress-spec.md §3.3): for a head holding n KVs with
// r = ((n-1) mod b) + 1 KVs in its last block, freeing j blocks evicts its (j-1)·b + r lowest-
// scored KVs and costs the largest of them. The planner takes the B cheapest (head, j) pairs over
// all heads, ordered by (cost, head index, j); costs are non-decreasing in j, so each head gives a
// prefix of k blocks, and afterwards every compressed head holds only full blocks.
//
// A KV is evictable unless: its position > t - P (protected window: the last P tokens, t = the
// sequence's last position), its position < S (sinks), or its score is NaN or +inf. A head keeps at
// least ceil(m / b)·b KVs (m = min_kvs_per_head; a head with fewer keeps all of them).
// Within a head, equal scores are evicted lowest position first, then lowest slot.
//
// Thread-safety: EvictionPlanner is not thread-safe (it reuses scratch buffers); PlanEviction()
// is reentrant. KvSlotReader implementations must allow concurrent const reads.
#ifndef KVC_KVMANAGER_EVICTION_PLAN_H_
#define KVC_KVMANAGER_EVICTION_PLAN_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvmanager/kv_layout.h"

namespace kvc {

// Read-only view of the per-KV metadata stored beside each KV (executor storage, indexed by
// physical block id and offset within the block).
class KvSlotReader {
 public:
  virtual ~KvSlotReader() = default;
  // Eviction score of the KV in (block, offset): higher = more important.
  virtual float Score(int32_t block, int32_t offset) const = 0;
  // Absolute token position of the KV in (block, offset).
  virtual int32_t Position(int32_t block, int32_t offset) const = 0;
  // Bulk form: offsets [0, count) of `block` into scores[0, count) and positions[0, count).
  // The default calls Score/Position per slot; storage-backed readers override it.
  virtual void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const;
  // Hint before a plan reads the blocks of `tables`: a reader over device memory copies them to
  // the host at once (one transfer instead of one per block). The prefetched values stay valid
  // until the storage next changes (the executor invalidates them). Default: nothing.
  virtual void Prefetch(const SequenceBlockTables& tables) const {}
};

// A reader over flat host arrays laid out [num_blocks, block_size] (the CPU executor's layout and
// the tests'). Holds spans; the arrays must outlive it.
class FlatKvSlotReader final : public KvSlotReader {
 public:
  FlatKvSlotReader(std::span<const float> scores, std::span<const int32_t> positions,
                   int32_t block_size)
      : scores_(scores), positions_(positions), block_size_(block_size) {}
  float Score(int32_t block, int32_t offset) const override;
  int32_t Position(int32_t block, int32_t offset) const override;
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override;

 private:
  std::span<const float> scores_;
  std::span<const int32_t> positions_;
  int32_t block_size_;
};

// What may never be evicted. All >= 0.
struct EvictionConstraints {
  // P: KVs whose position > t - P (the last P tokens of the sequence) are kept in every head.
  int32_t protected_window = 0;
  // S: KVs whose position < S (attention sinks) are kept in every head.
  int32_t sink_tokens = 0;
  // m: no compressed head ends with fewer than ceil(m / b)·b KVs.
  int32_t min_kvs_per_head = 0;
};

// Copy the KV (K, V, score, position) in logical slot src_slot of a head into dst_slot.
// Physical coordinates refer to the head's block list BEFORE the eviction is applied; sources are
// always in blocks the plan frees, so the moves must run before those blocks are reused.
struct KvMove {
  int32_t src_slot = 0;
  int32_t dst_slot = 0;
  int32_t src_block = 0;
  int32_t src_offset = 0;
  int32_t dst_block = 0;
  int32_t dst_offset = 0;
};

// The eviction of one (layer, kv_head) with k = blocks_freed >= 1.
struct HeadEviction {
  int32_t head_index = 0;      // KvLayout::HeadIndex(layer, kv_head)
  int32_t num_kvs_before = 0;  // n, the head's count the plan was made for
  int32_t blocks_freed = 0;    // k
  int32_t kvs_evicted = 0;     // (k-1)·b + r
  // Evicted logical slots, ascending (kvs_evicted entries). Empty in a counts-only plan
  // (PlanFromBlockCounts), where selection and compaction ran on the device.
  std::vector<int32_t> evicted_slots;
  // Compaction (spec §3.4): each tail survivor (slot >= n') fills the lowest free hole (< n'),
  // n' = n - kvs_evicted. Empty in a counts-only plan.
  std::vector<KvMove> moves;
  // The last k block ids of the head's list, in list order: returned to the pool on apply.
  std::vector<int32_t> freed_blocks;
};

struct EvictionPlan {
  int64_t blocks_requested = 0;  // B, the budget's request
  int64_t blocks_freed = 0;      // sum of k; < B when the constraints leave too few evictable KVs
  int64_t kvs_evicted = 0;
  int64_t num_moves = 0;
  // Heads with k >= 1, ascending head_index.
  std::vector<HeadEviction> heads;

  bool empty() const { return heads.empty(); }
};

// Chooses how many blocks each head frees, for policies that allocate blocks to heads themselves
// (compression_policy.h). max_blocks[h] is kmax of head index h under the constraints (the most
// blocks it can free); the chooser writes blocks[h] (zero-initialised, L·H entries). Values are
// clamped to [0, max_blocks[h]] afterwards.
using BlockCountChooser =
    std::function<void(std::span<const int32_t> max_blocks, std::span<int32_t> blocks)>;

// Plans one sequence's eviction; keeps scratch buffers between calls (no steady-state allocation
// beyond the returned plan).
class EvictionPlanner {
 public:
  // num_tokens: the sequence's token count t+1 (positions are < num_tokens).
  // evict_blocks: B >= 0, blocks to free (from the budget helpers of compression_budget.h).
  // INVALID_ARGUMENT for inconsistent tables (wrong head count, list size != ceil(n/b), a head
  // holding more KVs than num_tokens, an out-of-range block id) or negative arguments.
  absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                    const KvSlotReader& reader, int64_t num_tokens,
                                    int64_t evict_blocks, const EvictionConstraints& constraints);

  // Per-head targets instead of the global rule: head index h frees
  // k = min(blocks_to_free_per_head[h], kmax_h) blocks (kmax_h: what the constraints let it give,
  // as in Plan), evicting its (k-1)·b + r lowest evictable KVs in the (score, position, slot)
  // order, exactly as Plan does within a head. blocks_requested = the sum of the targets.
  // INVALID_ARGUMENT as Plan, and for a target array of the wrong size or a negative target.
  absl::StatusOr<EvictionPlan> PlanPerHeadBlocks(const KvLayout& layout,
                                                 const SequenceBlockTables& tables,
                                                 const KvSlotReader& reader, int64_t num_tokens,
                                                 std::span<const int32_t> blocks_to_free_per_head,
                                                 const EvictionConstraints& constraints);

  // The general form: one gather pass computes every head's kmax, `choose` picks k per head from
  // it (see BlockCountChooser), and each head evicts as in PlanPerHeadBlocks.
  // blocks_requested = `blocks_requested` (informational). INVALID_ARGUMENT as Plan.
  absl::StatusOr<EvictionPlan> PlanWithChooser(const KvLayout& layout,
                                               const SequenceBlockTables& tables,
                                               const KvSlotReader& reader, int64_t num_tokens,
                                               int64_t blocks_requested,
                                               const EvictionConstraints& constraints,
                                               const BlockCountChooser& choose);

 private:
  struct Entry {
    uint32_t key;  // order-preserving image of the score
    int32_t position;
    int32_t slot;
  };
  struct HeadInfo {
    int32_t n = 0;
    int32_t r = 0;
    int32_t kmax = 0;
    int64_t begin = 0;  // entries_[begin, end) are this head's evictable KVs
    int64_t end = 0;
  };
  // Chooses k per head (the B cheapest (cost, head, j) by radix select on the cost threshold).
  void ChooseBlockCounts(int32_t block_size, int64_t evict_blocks, std::vector<int32_t>* k);
  // Fills heads_ and entries_ (each head's evictable KVs and kmax); gathers nothing when
  // `gather` is false or no position is evictable. The arguments must be valid.
  void Gather(const KvLayout& layout, const SequenceBlockTables& tables, const KvSlotReader& reader,
              int64_t num_tokens, const EvictionConstraints& constraints, bool gather);
  // Builds the plan evicting k[h] <= kmax blocks from each head (per-head selection, compaction).
  EvictionPlan Emit(const KvLayout& layout, const SequenceBlockTables& tables,
                    const std::vector<int32_t>& k);

  std::vector<Entry> entries_;
  std::vector<HeadInfo> heads_;
  std::vector<float> block_scores_;
  std::vector<int32_t> block_positions_;
  std::vector<int64_t> hist_;
  std::vector<int64_t> base_;
  std::vector<int32_t> counts_;
};

// Checks the arguments every planner entry point shares: num_tokens >= 0, the constraints >= 0,
// and tables consistent with the layout (head count, ceil(n/b) blocks per head, n <= num_tokens,
// block ids in range). INVALID_ARGUMENT naming the offending value otherwise.
absl::Status ValidateEvictionInput(const KvLayout& layout, const SequenceBlockTables& tables,
                                   int64_t num_tokens, const EvictionConstraints& constraints);

// One-shot form of EvictionPlanner::PlanPerHeadBlocks.
absl::StatusOr<EvictionPlan> PlanPerHeadBlocks(const KvLayout& layout,
                                               const SequenceBlockTables& tables,
                                               const KvSlotReader& reader, int64_t num_tokens,
                                               std::span<const int32_t> blocks_to_free_per_head,
                                               const EvictionConstraints& constraints);

// One-shot form of EvictionPlanner::Plan.
absl::StatusOr<EvictionPlan> PlanEviction(const KvLayout& layout, const SequenceBlockTables& tables,
                                          const KvSlotReader& reader, int64_t num_tokens,
                                          int64_t evict_blocks,
                                          const EvictionConstraints& constraints);

// A counts-only plan for when selection and compaction ran where the scores live (the CUDA
// backend): blocks_per_head[h] = k for head index h (L·H entries). Fills everything but
// evicted_slots and moves. INVALID_ARGUMENT if a k is negative or exceeds the head's blocks.
absl::StatusOr<EvictionPlan> PlanFromBlockCounts(const KvLayout& layout,
                                                 const SequenceBlockTables& tables,
                                                 std::span<const int32_t> blocks_per_head);

// Compaction moves of one head (spec §3.4) in logical slots: for a head of num_kvs KVs and its
// evicted slots (ascending, distinct, < num_kvs), appends (src, dst) pairs moving every survivor
// at slot >= num_kvs - evicted.size() into the lowest unfilled hole below that bound.
void CompactionMoves(std::span<const int32_t> evicted_slots, int32_t num_kvs,
                     std::vector<std::pair<int32_t, int32_t>>* moves);

}  // namespace kvc

#endif  // KVC_KVMANAGER_EVICTION_PLAN_H_
