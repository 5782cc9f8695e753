// KvManager: owner of one worker's per-head paged KV metadata — the block pool, every sequence's
// per-(layer, kv_head) block lists and KV counts, per-sequence accounting and the counters that
// feed kvc.v1.KvManager and /metrics. Memory model and invariants: docs/design/kv_cache_layout.md.
//
// Ownership: the KvManager owns block ids and block tables (host memory); the executor owns the
// storage those ids index (K, V, score, position). No device pointers live here.
//
// Thread-safety: every method takes an internal absl::Mutex, so any thread may call any method.
// By convention ONE engine thread mutates (AddSequence, Append, FreeSequence, ...); gRPC and
// metrics threads only read (Stats, Capacity, ...). Tables() hands out a pointer into the
// manager's state without holding the lock: only the mutating (engine) thread may use it, and
// only until its next mutation of that sequence (FreeSequence invalidates it).
#ifndef KVC_KVMANAGER_KV_MANAGER_H_
#define KVC_KVMANAGER_KV_MANAGER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvmanager/block_pool.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"
#include "kvmanager/kv_stats.h"

namespace kvc {

struct KvManagerOptions {
  // num_layers, num_kv_heads, head_dim, block_size, num_blocks: all > 0; num_blocks <= INT32_MAX.
  KvLayout layout;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// Accounting of one sequence (Usage of kvc.v1.Inference is built from it).
struct SequenceUsage {
  // Tokens appended so far: the sequence's logical length (never reduced by eviction).
  int64_t tokens = 0;
  // Sum of num_kvs over its L·H heads.
  int64_t kvs_held = 0;
  // tokens * layers * kv_heads.
  int64_t kvs_uncompressed = 0;
  // Blocks it owns.
  int64_t blocks = 0;
  // Applied compressions that freed at least one block.
  int32_t compressions = 0;
  // KVs evicted from it so far.
  int64_t evicted_kvs = 0;
};

class KvManager {
 public:
  // REQUIRES: options.Validate().ok() (checked; use Create() for untrusted options).
  explicit KvManager(const KvManagerOptions& options);
  static absl::StatusOr<std::unique_ptr<KvManager>> Create(const KvManagerOptions& options);

  KvManager(const KvManager&) = delete;
  KvManager& operator=(const KvManager&) = delete;

  const KvLayout& layout() const { return layout_; }

  // Registers a sequence with no tokens (every head empty). ALREADY_EXISTS if present.
  absl::Status AddSequence(int64_t seq_id);

  // Blocks the next Append(seq_id, n) would allocate: sum over the L·H heads of
  // ceil((num_kvs + n) / b) - blocks.size() (each head has its own count). -1 if seq_id is unknown
  // or n < 0.
  int64_t BlocksNeededToAppend(int64_t seq_id, int32_t n) const;

  // Blocks a new sequence of num_tokens tokens needs: L·H·ceil(num_tokens / b). Admission uses
  // BlocksForNewSequence(prompt_len + 1).
  int64_t BlocksForNewSequence(int64_t num_tokens) const;

  // Reserves room for n more KVs in EVERY (layer, kv_head) of the sequence and adds n to its
  // token count, allocating blocks where a head crosses a block boundary. All-or-nothing:
  // RESOURCE_EXHAUSTED (not enough free blocks) leaves everything unchanged. NOT_FOUND for an
  // unknown sequence, INVALID_ARGUMENT for n < 0 or a count past INT32_MAX. n == 0 is a no-op.
  absl::Status Append(int64_t seq_id, int32_t n);

  // Returns every block of the sequence to the pool and forgets it (finish, abort, error,
  // preemption). NOT_FOUND if unknown.
  absl::Status FreeSequence(int64_t seq_id);

  // The sequence's block tables (indexed by KvLayout::HeadIndex), or nullptr if unknown. See the
  // thread-safety note above: engine thread only.
  const SequenceBlockTables* Tables(int64_t seq_id) const;

  bool HasSequence(int64_t seq_id) const;
  // NOT_FOUND if unknown.
  absl::StatusOr<SequenceUsage> Usage(int64_t seq_id) const;
  // Ids of the sequences present, ascending.
  std::vector<int64_t> SequenceIds() const;
  int64_t num_sequences() const;

  int64_t num_free_blocks() const;
  int64_t num_total_blocks() const { return layout_.num_blocks; }

  // --- Compression (plan, then apply; docs/design/eviction.md) ---

  // Blocks the sequence must free now to meet `settings` (compression_budget.h), from its
  // current tokens, blocks and KVs. NOT_FOUND if unknown.
  absl::StatusOr<int64_t> EvictBlocksForBudget(int64_t seq_id,
                                               const CompressionSettings& settings) const;

  // Plans the eviction of up to `evict_blocks` blocks from the sequence with `planner` (which
  // keeps its scratch between calls), reading scores and positions through `reader`. Pure: the
  // manager does not change. NOT_FOUND if unknown; planner errors otherwise.
  absl::StatusOr<EvictionPlan> PlanEviction(int64_t seq_id, const KvSlotReader& reader,
                                            int64_t evict_blocks,
                                            const EvictionConstraints& constraints,
                                            EvictionPlanner* planner) const;

  // Applies a plan made for the sequence's CURRENT tables: truncates each listed head's block
  // list by k, returns those blocks to the pool, lowers num_kvs by (k-1)·b + r, and counts the
  // evicted KVs, compactions (one per head), moved KVs and one compression under `trigger` (when
  // the plan frees anything). Appends the plan's moves to *moves (may be null) for the executor,
  // which must run them before the freed blocks are reused (the same engine step).
  // All-or-nothing: NOT_FOUND (unknown sequence), FAILED_PRECONDITION (the plan does not match
  // the current tables: stale or for another sequence), INVALID_ARGUMENT (malformed plan).
  absl::Status ApplyEviction(int64_t seq_id, const EvictionPlan& plan, CompressionTrigger trigger,
                             std::vector<KvMove>* moves);

  // Counts one preemption (the engine calls it when it preempts a sequence; it frees the
  // sequence's blocks with FreeSequence separately).
  void RecordPreemption();

  // Snapshot of occupancy and counters. Cost O(L) (+ O(L·H) with include_heads); the aggregates
  // are maintained incrementally, so this does not walk the sequences.
  KvStats Stats(bool include_heads) const;
  // The capacity part of Stats(), cheaper still (O(1)).
  KvCapacityStats Capacity() const;

  // Verifies every invariant of docs/design/kv_cache_layout.md: each block is free or owned by
  // exactly one (seq, layer, head); each head's list holds exactly ceil(num_kvs / b) blocks;
  // 0 <= num_kvs <= tokens; free + used = total; no id twice; no free-list duplicates; and the
  // incrementally kept aggregates equal a recount. INTERNAL with a precise message otherwise.
  // O(num_blocks + total heads); for tests and debug builds.
  absl::Status CheckInvariants() const;

 private:
  struct Sequence {
    SequenceBlockTables tables;
    int64_t tokens = 0;
    int64_t kvs_held = 0;
    int64_t blocks = 0;
    int32_t compressions = 0;
    int64_t evicted_kvs = 0;
  };

  const Sequence* FindLocked(int64_t seq_id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Sequence* FindLocked(int64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BlocksNeededLocked(const Sequence& seq, int64_t n) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  KvCapacityStats CapacityLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Blocks needed for a head holding num_kvs KVs.
  int64_t BlocksFor(int64_t num_kvs) const {
    return (num_kvs + layout_.block_size - 1) / layout_.block_size;
  }

  const KvLayout layout_;

  mutable absl::Mutex mu_;
  BlockPool pool_ ABSL_GUARDED_BY(mu_);
  // unique_ptr keeps Tables() pointers stable across rehashing.
  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> seqs_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> scratch_ids_ ABSL_GUARDED_BY(mu_);

  // Aggregates over all sequences, kept incrementally.
  int64_t kvs_held_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int64_t> layer_blocks_ ABSL_GUARDED_BY(mu_);  // [L]
  std::vector<int64_t> head_kvs_ ABSL_GUARDED_BY(mu_);      // [L·H], by HeadIndex

  // Counters.
  int64_t evicted_kvs_total_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t compactions_total_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t moved_kvs_total_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> compressions_by_trigger_ ABSL_GUARDED_BY(mu_);
  int64_t preemptions_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvc

#endif  // KVC_KVMANAGER_KV_MANAGER_H_
