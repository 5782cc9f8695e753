// KV-Compress eviction scores, fp32 reference (reference/kvcompress-spec.md §2; the CUDA kernels
// are tested against this).
//
// Given attention probabilities p_j(q, s) of the last Q queries of a sequence (query head j, KV
// slot s of j's KV head — as PagedAttention writes them with its `probs` hook), it adds, for every
// KV head h and slot s < num_kvs[h]:
//
//   A_j(s)    = Σ_q p_j(q, s)^2                                   (squared-attention, "L2-sum")
//   A_j       ← MaxPool1d(A_j, kernel=pool_kernel, stride=1, pad=pool_kernel/2) over slots,
//               when pool_kernel > 1 (prefill; slot order == position order after a prefill)
//   score[s] += Σ_{j in group(h)} A_j(s)                          (query-group aggregation)
//
// into score[block_tables[h][s / b] * b + s % b]. Prefill passes the last w prompt queries with
// pooling; a decode step passes its one query without pooling (decode scores accumulate).
// Reentrant; runs on ThreadPool::Default() over KV heads.
#ifndef KVC_KERNELS_CPU_KV_SCORES_H_
#define KVC_KERNELS_CPU_KV_SCORES_H_

#include <cstdint>

namespace kvc::cpu {

struct KvScoreParams {
  int32_t num_queries = 0;  // Q: queries whose probabilities are aggregated
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t pool_kernel = 0;  // odd >= 3 to max-pool; 0 or 1 = off
  // p for query q, head j, slot s at probs[(q * num_q_heads + j) * probs_stride + s].
  const float* probs = nullptr;
  int64_t probs_stride = 0;
  const int32_t* const* block_tables = nullptr;  // [num_kv_heads] -> block ids
  const int32_t* num_kvs = nullptr;              // [num_kv_heads]
  float* scores = nullptr;                       // [num_blocks, block_size], accumulated into
};

void AccumulateKvScores(const KvScoreParams& p);

}  // namespace kvc::cpu

#endif  // KVC_KERNELS_CPU_KV_SCORES_H_
