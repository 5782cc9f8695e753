// Host-only entry points of the device-side KV-Compress eviction (library kvc_eviction_cuda):
// selection of the KVs to evict from one sequence and the compaction moves, entirely on the
// device; only the per-head block counts (and an error word) are written for the caller to copy
// back. The rule and its tie-breaks are those of kvmanager/eviction_plan.h (EvictionPlanner::Plan
// followed by its moves), which is the CPU reference; KvCompressParams (eviction_params.h)
// restates them.
//
// How (docs/design/eviction.md, "How the planner computes it", on the device):
//   1. pass 0 of the global radix select: one kernel over every KV slot of the sequence builds
//      per-head 256-bin histograms of the top byte of the order-preserving score key of the
//      evictable KVs (which also counts them);
//   2. a one-CTA scan per pass turns the histograms into the threshold's next digit (the smallest
//      digit at which sum over heads of blocks_within(head, count <= threshold) >= B), passes 1-3
//      histogram the next byte of the KVs matching the prefix; the last scan distributes the
//      blocks costing exactly the threshold by head index and writes k per head;
//   3. one CTA per head with k >= 1 radix-selects its (k-1)b + r lowest evictable KVs on the
//      64-bit key (score key, position) with ties at the threshold broken by slot in one ordered
//      sweep that also writes the evicted-slot bitmap and per-word hole / survivor ranks, then
//      runs its own moves (each survivor >= n' pairs with the hole of the same rank; destinations
//      are < n' <= sources, so the moves of a head never overlap and run in parallel).
// No sort of all KVs; scores and positions are read from the pool through the tables (no copy).
//
// Conventions as cuda_kernels.h: the call validates its Params (INVALID_ARGUMENT naming the
// field), launches asynchronously on `stream`, returns INTERNAL if a launch failed, never
// synchronises and never allocates. Thread-safety: reentrant; calls that share a workspace or
// touch the same blocks must be ordered by the stream.
#ifndef KVC_KERNELS_EVICTION_H_
#define KVC_KERNELS_EVICTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/include/kvc/kernels/eviction_params.h"

namespace kvc::kernels {

// Workspace bytes of KvCompressEvict for a sequence of `num_heads` heads (L·H) none of which holds
// more than `max_num_kvs` KVs: per-head histograms and state, and per-head slot bitmaps with
// word ranks (about 3 bits per slot of max_num_kvs). 256-byte multiple.
int64_t KvCompressWorkspaceBytes(int32_t num_heads, int32_t max_num_kvs);

// Queues the eviction of p.evict_blocks blocks from one sequence (see KvCompressParams). With
// evict_blocks == 0 it only zeroes p.out.
absl::Status KvCompressEvict(const KvCompressParams& p, StreamHandle stream);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EVICTION_H_
