// KvStats: a snapshot of one KvManager's occupancy, capacity and compression counters, returned by
// KvManager::Stats(). Plain data; the worker's kvc.v1.KvManager service and the /metrics exporter
// convert it (proto/kvc/v1/kvmanager.proto mirrors these fields).
//
// Units: blocks are pool blocks (block_size KV slots of one (seq, layer, kv_head)); a KV is one
// (token, layer, kv_head) key/value pair; a token is one position of a sequence (L·H KVs when
// uncompressed). Thread-safety: plain value type.
#ifndef KVC_KVMANAGER_KV_STATS_H_
#define KVC_KVMANAGER_KV_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kvc {

// Physical and effective capacity (the fields of kvc.v1.KvCapacity the KvManager knows).
struct KvCapacityStats {
  int64_t total_blocks = 0;
  int64_t free_blocks = 0;
  int32_t block_size = 0;
  // free_blocks * block_size / (layers * kv_heads), rounded down: tokens that fit uncompressed.
  int64_t physical_free_tokens = 0;
  // kvs_uncompressed / kvs_held over the sequences present; 1 when none hold KVs.
  double compression_ratio = 1.0;
  // physical_free_tokens * compression_ratio, rounded down.
  int64_t effective_free_tokens = 0;
  // total_blocks * block_size / (layers * kv_heads), rounded down.
  int64_t total_tokens = 0;
  // Sequences currently holding blocks (added and not yet freed).
  int64_t sequences = 0;
};

struct LayerOccupancy {
  int32_t layer = 0;
  int64_t blocks = 0;  // blocks owned by this layer's heads, over all sequences
  int64_t kvs = 0;     // KVs held by this layer's heads, over all sequences
  // KVs per kv head of this layer (num_kv_heads entries), only when Stats(include_heads=true).
  std::vector<int64_t> head_kvs;
};

struct KvStats {
  KvCapacityStats capacity;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int64_t used_blocks = 0;
  // Sum of num_kvs over every (sequence, layer, kv_head).
  int64_t kvs_held = 0;
  // Sum over sequences of tokens * layers * kv_heads: what an uncompressed cache would hold.
  int64_t kvs_uncompressed = 0;
  // One entry per layer, in layer order.
  std::vector<LayerOccupancy> layers;

  // Counters since the KvManager was created (monotonic).
  int64_t evicted_kvs_total = 0;  // KVs removed by compression
  int64_t compactions_total = 0;  // (seq, layer, head) lists compressed (one per head with k>0)
  int64_t moved_kvs_total = 0;    // KVs copied into holes by compaction
  // Applied compressions that freed at least one block, by trigger name (CompressionTriggerName).
  std::map<std::string, int64_t> compressions_by_trigger;
  int64_t preemptions_total = 0;  // KvManager::RecordPreemption() calls
};

}  // namespace kvc

#endif  // KVC_KVMANAGER_KV_STATS_H_
