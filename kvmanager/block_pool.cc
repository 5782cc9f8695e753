#include "kvmanager/block_pool.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvc {

BlockPool::BlockPool(int64_t num_blocks) {
  KVC_CHECK(num_blocks >= 0 && num_blocks <= std::numeric_limits<int32_t>::max())
      << "num_blocks=" << num_blocks;
  is_free_.assign(static_cast<size_t>(num_blocks), 1);
  free_list_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the bottom of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (int64_t id = num_blocks - 1; id >= 0; --id) free_list_.push_back(static_cast<int32_t>(id));
}

absl::Status BlockPool::AllocateInto(int64_t n, std::vector<int32_t>* out) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " blocks"));
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV pool exhausted: need ", n, " blocks, ",
                                                     num_free(), " free of ", num_total()));
  }
  out->reserve(out->size() + static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = free_list_.back();
    free_list_.pop_back();
    is_free_[id] = 0;
    out->push_back(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BlockPool::Allocate(int64_t n) {
  std::vector<int32_t> ids;
  absl::Status status = AllocateInto(n, &ids);
  if (!status.ok()) return status;
  return ids;
}

void BlockPool::Free(std::span<const int32_t> ids) {
  for (const int32_t id : ids) {
    KVC_CHECK(id >= 0 && id < num_total())
        << "freeing block id " << id << " out of range [0, " << num_total() << ")";
    KVC_CHECK(!is_free_[id]) << "double free of block " << id;
    is_free_[id] = 1;
    free_list_.push_back(id);
  }
}

absl::Status BlockPool::CheckInvariants() const {
  std::vector<uint8_t> seen(is_free_.size(), 0);
  for (size_t i = 0; i < free_list_.size(); ++i) {
    const int32_t id = free_list_[i];
    if (id < 0 || id >= num_total()) {
      return absl::InternalError(
          absl::StrCat("free list entry ", i, " holds out-of-range block id ", id));
    }
    if (seen[id]) {
      return absl::InternalError(absl::StrCat("block ", id, " appears twice in the free list"));
    }
    seen[id] = 1;
    if (!is_free_[id]) {
      return absl::InternalError(
          absl::StrCat("block ", id, " is in the free list but flagged used"));
    }
  }
  int64_t flagged = 0;
  for (const uint8_t f : is_free_) flagged += f;
  if (flagged != num_free()) {
    return absl::InternalError(
        absl::StrCat(flagged, " blocks flagged free but the free list has ", num_free()));
  }
  return absl::OkStatus();
}

}  // namespace kvc
