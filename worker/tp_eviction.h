// KV-Compress eviction planning under tensor parallelism: each rank holds the scores of its own
// KV heads only, yet the sequence's B cheapest (head, j) blocks must be chosen over ALL heads,
// consistently on every rank, so that together the ranks free exactly what the single-rank
// EvictionPlanner (kvmanager/eviction_plan.h) would. The result is bit-for-bit that planner's
// plan: same k per head, same evicted slots, same compaction moves, same tie-breaking
// ((cost, head index, j) across heads; (score, position, slot) within a head).
//
// How: every rank gathers its heads' evictable KVs (order-preserving 32-bit score keys) and
// their kmax; one all-reduce sums the blocks available; if B is smaller, a radix select of the
// cost threshold tau runs in 4 passes of 8 bits, each pass all-reducing, for each of the 256
// candidate digits, the number of (head, j) blocks that cost at most that digit's bound
// (a head's count is blocks_within(#{its KVs with key <= bound}), a non-linear function of its
// own histogram, so per-digit BLOCK counts are reduced, never KV histograms); every rank then
// picks the same digit. Finally one all-reduce of (blocks below tau, blocks at tau) per head index
// lets every rank hand out the blocks at tau in head-index order and know every head's k.
// Collectives per plan: 6 (1 + 4 + 1), of 1, 256, 256, 256, 256 and 2·L·H int64s. No
// all-reduce depends on local data for its count or order, so ranks stay in lockstep.
//
// The GPU implementation runs the same algorithm with the histograms and counts on the device
// (ncclAllReduce on device buffers) so that only per-head counts reach the host.
//
// Thread-safety: a DistributedEvictionPlanner is used by its rank's thread only (scratch
// buffers); every rank of the group calls Plan() with the same replicated arguments (layout,
// tables, num_tokens, evict_blocks, constraints) and its own reader.
#ifndef KVC_WORKER_TP_EVICTION_H_
#define KVC_WORKER_TP_EVICTION_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"
#include "worker/communicator.h"

namespace kvc {

// Megatron-style head ownership: rank r of N owns KV heads [r·H/N, (r+1)·H/N) of EVERY layer
// (and their query groups). Head index l·H + j (KvLayout::HeadIndex) belongs to rank j / (H/N).
struct KvHeadSharding {
  int32_t num_kv_heads = 1;
  int32_t world_size = 1;

  // INVALID_ARGUMENT unless world_size >= 1, num_kv_heads >= 1 and num_kv_heads % world_size == 0.
  static absl::StatusOr<KvHeadSharding> Create(int32_t num_kv_heads, int32_t world_size);

  int32_t heads_per_rank() const { return num_kv_heads / world_size; }
  int32_t first_kv_head(int32_t rank) const { return rank * heads_per_rank(); }
  int32_t RankOfKvHead(int32_t kv_head) const { return kv_head / heads_per_rank(); }
  int32_t RankOfHeadIndex(int32_t head_index) const {
    return RankOfKvHead(head_index % num_kv_heads);
  }
};

// One rank's share of a distributed plan.
struct RankEvictionPlan {
  // k (blocks freed) of every head index (L·H entries), identical on every rank: what a
  // counts-only plan needs (PlanFromBlockCounts) where selection ran on the devices.
  std::vector<int32_t> blocks_per_head;
  // This rank's heads only, in the planner's full form (evicted slots, moves, freed blocks),
  // heads ascending. blocks_requested = B; blocks_freed, kvs_evicted, num_moves are this rank's.
  EvictionPlan local;
};

class DistributedEvictionPlanner {
 public:
  // `comm` (not owned) must outlive the planner; comm->world_size() == sharding.world_size.
  DistributedEvictionPlanner(Communicator* comm, KvHeadSharding sharding);

  // Plans freeing `evict_blocks` blocks of one sequence (as EvictionPlanner::Plan), reading only
  // this rank's heads through `reader`. INVALID_ARGUMENT (on every rank alike, before any
  // collective) for the planner's argument errors or a sharding that does not match the layout
  // or the communicator; a communicator error (ABORTED, ...) otherwise.
  absl::StatusOr<RankEvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                        const KvSlotReader& reader, int64_t num_tokens,
                                        int64_t evict_blocks,
                                        const EvictionConstraints& constraints);

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
    int64_t begin = 0;  // entries_[begin, end): this head's evictable KVs (own heads only)
    int64_t end = 0;
  };
  // Blocks head h frees when its c cheapest evictable KVs may go.
  int64_t BlocksWithin(int32_t h, int64_t c, int32_t block_size) const;
  void Gather(const KvLayout& layout, const SequenceBlockTables& tables, const KvSlotReader& reader,
              int64_t num_tokens, const EvictionConstraints& constraints);
  absl::Status ChooseBlockCounts(const KvLayout& layout, int64_t evict_blocks,
                                 std::vector<int32_t>* k);
  EvictionPlan EmitLocal(const KvLayout& layout, const SequenceBlockTables& tables,
                         const std::vector<int32_t>& k);

  Communicator* comm_;
  KvHeadSharding sharding_;
  std::vector<int32_t> own_;  // this rank's head indices, ascending (for the current layout)
  std::vector<Entry> entries_;
  std::vector<HeadInfo> heads_;  // all L·H; only own heads filled
  std::vector<float> block_scores_;
  std::vector<int32_t> block_positions_;
  std::vector<int64_t> hist_;  // [own head][256]
  std::vector<int64_t> base_;  // per head index: own entries below the current prefix range
  std::vector<int64_t> ties_;  // per head index: own entries equal to tau (after the last pass)
  std::vector<int64_t> reduce_;
};

// The union of every rank's `local` plan (heads ascending): equals EvictionPlanner::Plan's plan
// for the same inputs. INVALID_ARGUMENT if the plans disagree on blocks_requested or two list
// the same head.
absl::StatusOr<EvictionPlan> MergeRankPlans(std::span<const EvictionPlan> local_plans);

}  // namespace kvc

#endif  // KVC_WORKER_TP_EVICTION_H_
