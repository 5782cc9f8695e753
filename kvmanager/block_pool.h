// BlockPool: the free list of KV block ids 0..num_blocks-1 of one worker's KV pool.
//
// A block id names `block_size` KV slots of one (sequence, layer, kv_head) in the executor's
// storage (kvmanager/kv_layout.h). The pool only tracks which ids are free; it knows nothing about
// owners (KvManager does). Allocation is all-or-nothing; freeing an id that is already free is a
// bug and aborts (KVC_CHECK). Ids are handed out lowest-first from a fresh pool and freed ids are
// reused last-in-first-out, so allocation order is deterministic.
//
// Thread-safety: not thread-safe; the owner (KvManager) serialises access.
#ifndef KVC_KVMANAGER_BLOCK_POOL_H_
#define KVC_KVMANAGER_BLOCK_POOL_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc {

class BlockPool {
 public:
  // REQUIRES: 0 <= num_blocks <= INT32_MAX.
  explicit BlockPool(int64_t num_blocks);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Appends n free ids to *out and marks them used, or returns RESOURCE_EXHAUSTED (n > free) /
  // INVALID_ARGUMENT (n < 0) and changes nothing.
  absl::Status AllocateInto(int64_t n, std::vector<int32_t>* out);
  // Same, returning the ids.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);

  // Returns ids to the pool. REQUIRES (checked, aborts): every id is in range and currently used,
  // and no id appears twice.
  void Free(std::span<const int32_t> ids);

  int64_t num_free() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t num_total() const { return static_cast<int64_t>(is_free_.size()); }
  int64_t num_used() const { return num_total() - num_free(); }
  bool IsFree(int32_t id) const { return is_free_[id] != 0; }

  // The free ids, in no particular order (for invariant checks and tests).
  const std::vector<int32_t>& free_list() const { return free_list_; }

  // Free list and flags agree: every listed id is in range, listed once and flagged free, and the
  // number of flagged ids equals the list length. INTERNAL with a precise message otherwise.
  absl::Status CheckInvariants() const;

 private:
  // Stack of free ids; the next id handed out is free_list_.back().
  std::vector<int32_t> free_list_;
  // 1 when the id is free; indexed by block id.
  std::vector<uint8_t> is_free_;
};

}  // namespace kvc

#endif  // KVC_KVMANAGER_BLOCK_POOL_H_
