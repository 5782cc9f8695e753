// Parameter struct of the device-side KV-Compress eviction (selection + compaction of ONE
// sequence; entry points in eviction.h). POD only: nvcc includes this header (no Abseil, no CUDA
// types).
//
// Ownership: every pointer is a caller-owned DEVICE pointer; the kernels only touch it during
// the launches queued on the given stream.
#ifndef KVC_KERNELS_EVICTION_PARAMS_H_
#define KVC_KERNELS_EVICTION_PARAMS_H_

#include <cstdint>

#include "kernels/include/kvc/kernels/params.h"

namespace kvc::kernels {

// Bits of KvCompressParams::out[num_heads] (the error word). 0 = success. Any bit set means the
// device found its input inconsistent (the host validated it, so this is a bug or a race): the
// counts are then not a valid plan and the moves may be partial.
enum KvCompressError : int32_t {
  kKvCompressBadTable = 1,      // a num_kvs above tables.max_num_kvs or a block id out of range
  kKvCompressNoThreshold = 2,   // the global radix select found no threshold digit
  kKvCompressBadCount = 4,      // the tie distribution did not add up to the requested blocks
  kKvCompressNoHeadSelect = 8,  // a head's radix select found no digit (k > what it can give)
  kKvCompressBadMoves = 16,     // holes below n' and survivors at or above n' differ in number
};

// Evicts blocks from one sequence with the global KV-Compress rule of
// kvmanager/eviction_plan.h (EvictionPlanner::Plan), then compacts every head in place:
//   * a KV is evictable iff sink_tokens <= position < num_tokens - protected_window and its
//     score is neither NaN nor +inf; a head keeps at least ceil(min_kvs_per_head / b) blocks;
//   * head h with n KVs (r = ((n-1) mod b) + 1) frees j blocks at cost = the ((j-1)b + r)-th
//     lowest evictable score; the evict_blocks cheapest (cost, head index, j) pairs are taken
//     (all of them when there are fewer);
//   * a head freeing k blocks evicts its (k-1)b + r lowest evictable KVs in the order
//     (score, position, slot), and each survivor in slots >= n' = n - evicted moves (K row, V
//     row, score, position) into the lowest hole below n' (CompactionMoves' order).
// Heads are the L·H (layer, kv_head) pairs of the sequence, by KvLayout::HeadIndex: `tables`
// has num_seqs = 1 and num_kv_heads = L·H. Only slots [0, num_kvs) of a head are read; the
// freed blocks (the last k of each list) are left as they were.
struct KvCompressParams {
  PagedKvCache cache;        // k, v, scores and positions are all read and written
  HeadTables tables;         // num_seqs == 1, num_kv_heads = heads of the sequence
  int64_t num_tokens = 0;    // t + 1: the sequence's token count
  int64_t evict_blocks = 0;  // B >= 0
  int32_t protected_window = 0;
  int32_t sink_tokens = 0;
  int32_t min_kvs_per_head = 0;
  // [num_heads + 1] int32: out[h] = blocks freed by head h (k), out[num_heads] = error bits
  // (KvCompressError). Zeroed by the entry point before the kernels run.
  int32_t* out = nullptr;
  void* workspace = nullptr;  // >= KvCompressWorkspaceBytes(...), 256-byte aligned
  int64_t workspace_bytes = 0;
};

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EVICTION_PARAMS_H_
