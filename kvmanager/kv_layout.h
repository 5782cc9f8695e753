// Shapes shared by the KV-manager (which owns block ids and per-head block tables) and the
// executors (which own the device/host storage those ids index). No device pointers here.
//
// Memory model (docs/design/kv_cache_layout.md): one block holds `block_size` KVs of ONE
// (sequence, layer, kv_head). All layers share one pool of `num_blocks` blocks. Each
// (sequence, layer, kv_head) has its own block list and its own KV count; the KV in logical
// slot i of a head lives in block blocks[i / block_size], offset i % block_size.
#ifndef KVC_KVMANAGER_KV_LAYOUT_H_
#define KVC_KVMANAGER_KV_LAYOUT_H_

#include <cstdint>
#include <vector>

namespace kvc {

struct KvLayout {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;
  int64_t num_blocks = 0;

  int32_t heads_per_seq() const { return num_layers * num_kv_heads; }
  // Index of (layer, kv_head) in SequenceBlockTables::heads.
  int32_t HeadIndex(int32_t layer, int32_t kv_head) const { return layer * num_kv_heads + kv_head; }
};

// Block list of one (sequence, layer, kv_head). Invariant: blocks.size() == ceil(num_kvs / b).
struct HeadBlockTable {
  std::vector<int32_t> blocks;
  int32_t num_kvs = 0;
};

// Block tables of all (layer, kv_head) pairs of one sequence, indexed by KvLayout::HeadIndex.
struct SequenceBlockTables {
  std::vector<HeadBlockTable> heads;
};

}  // namespace kvc

#endif  // KVC_KVMANAGER_KV_LAYOUT_H_
