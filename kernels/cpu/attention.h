// Paged attention, fp32 reference (prefill, chunked prefill and decode are the same kernel).
//
// KV storage (owned by the executor, indexed by block id): K and V [num_blocks, block_size,
// head_dim], positions [num_blocks, block_size] int32. Each KV head h has its own block table:
// logical slot s lives in block block_tables[h][s / block_size], offset s % block_size, for
// s < num_kvs[h]. Query t at position q_positions[t] sees slot s iff
// kv_positions[slot] <= q_positions[t] — causal masking by stored position, so it stays correct
// after compaction, when slot order is no longer position order. Query head qh reads KV head
// qh / G, G = num_q_heads / num_kv_heads (GQA).
//
//   out = softmax(scale * q·Kᵀ over visible slots) · V
//
// Memory: O(num_kvs) scratch per worker thread, never O(queries x kvs). A query that sees no KV
// gets a zero output. Optional hook: per-KV probabilities p for the last queries (the input of
// the KV-Compress scores: squared p summed over a GQA group).
//
// Reentrant; runs on ThreadPool::Default() over (kv head, query) work items.
#ifndef KVC_KERNELS_CPU_ATTENTION_H_
#define KVC_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

namespace kvc::cpu {

struct PagedAttentionParams {
  int32_t num_queries = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  float scale = 1.0f;  // usually 1 / sqrt(head_dim)

  const float* q = nullptr;              // query t, head qh at q[t * q_stride + qh * head_dim]
  int64_t q_stride = 0;                  // 0 = num_q_heads * head_dim
  const int32_t* q_positions = nullptr;  // [num_queries]

  const float* k_cache = nullptr;                // [num_blocks, block_size, head_dim]
  const float* v_cache = nullptr;                // [num_blocks, block_size, head_dim]
  const int32_t* kv_positions = nullptr;         // [num_blocks, block_size]
  const int32_t* const* block_tables = nullptr;  // [num_kv_heads] -> block ids
  const int32_t* num_kvs = nullptr;              // [num_kv_heads]

  float* out = nullptr;    // query t, head qh at out[t * out_stride + qh * head_dim]
  int64_t out_stride = 0;  // 0 = num_q_heads * head_dim

  // Optional: probabilities of queries t >= probs_first_query, written to
  // probs[((t - probs_first_query) * num_q_heads + qh) * probs_stride + s] for every slot
  // s < probs_stride (0 for masked slots and for s >= num_kvs of the head).
  float* probs = nullptr;
  int32_t probs_first_query = 0;
  int64_t probs_stride = 0;  // >= max num_kvs
};

void PagedAttention(const PagedAttentionParams& p);

}  // namespace kvc::cpu

#endif  // KVC_KERNELS_CPU_ATTENTION_H_
