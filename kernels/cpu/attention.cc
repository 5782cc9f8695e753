#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc::cpu {
namespace internal {

// Scratch of one worker chunk: logits / exp weights [G][num_kvs], per-head max and sum.
struct AttentionScratch {
  std::vector<float> weights;
  std::vector<float> max;
  std::vector<double> sum;
};

// Work items [begin, end), item = kv_head * num_queries + query. Multiversioned (AVX2 + FMA
// clone on x86-64).
KVC_CPU_MULTIVERSION
void PagedAttentionItems(const PagedAttentionParams& p, int64_t begin, int64_t end,
                         AttentionScratch* scratch) {
  const int32_t d = p.head_dim;
  const int32_t bs = p.block_size;
  const int32_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t qs = p.q_stride ? p.q_stride : static_cast<int64_t>(p.num_q_heads) * d;
  const int64_t os = p.out_stride ? p.out_stride : static_cast<int64_t>(p.num_q_heads) * d;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  scratch->max.resize(group);
  scratch->sum.resize(group);

  for (int64_t item = begin; item < end; ++item) {
    const int32_t kvh = static_cast<int32_t>(item / p.num_queries);
    const int32_t t = static_cast<int32_t>(item % p.num_queries);
    const int32_t n = p.num_kvs[kvh];
    const int32_t* table = p.block_tables[kvh];
    const int32_t qpos = p.q_positions[t];
    scratch->weights.resize(static_cast<size_t>(group) * std::max(n, 1));
    float* w = scratch->weights.data();
    float* m = scratch->max.data();
    double* sum = scratch->sum.data();

    // Pass 1: scaled logits of visible slots (-inf when masked) and the running max per head.
    for (int32_t g = 0; g < group; ++g) m[g] = kNegInf;
    for (int32_t s = 0; s < n; ++s) {
      const int64_t slot = static_cast<int64_t>(table[s / bs]) * bs + s % bs;
      if (p.kv_positions[slot] > qpos) {
        for (int32_t g = 0; g < group; ++g) w[g * n + s] = kNegInf;
        continue;
      }
      const float* k = p.k_cache + slot * d;
      for (int32_t g = 0; g < group; ++g) {
        const float* q = p.q + t * qs + static_cast<int64_t>(kvh * group + g) * d;
        const float l = simd::Dot(q, k, d) * p.scale;
        w[g * n + s] = l;
        m[g] = std::max(m[g], l);
      }
    }
    // Pass 2: exp weights and their sums.
    for (int32_t g = 0; g < group; ++g) {
      double total = 0.0;
      float* wg = w + g * n;
      if (m[g] == kNegInf) {  // no visible KV
        std::fill(wg, wg + n, 0.0f);
      } else {
        for (int32_t s = 0; s < n; ++s) {
          const float e = wg[s] == kNegInf ? 0.0f : std::exp(wg[s] - m[g]);
          wg[s] = e;
          total += e;
        }
      }
      sum[g] = total;
    }
    // Pass 3: out = sum_s e_s v_s / sum_s e_s.
    for (int32_t g = 0; g < group; ++g) {
      float* o = p.out + t * os + static_cast<int64_t>(kvh * group + g) * d;
      std::fill(o, o + d, 0.0f);
    }
    for (int32_t s = 0; s < n; ++s) {
      const int64_t slot = static_cast<int64_t>(table[s / bs]) * bs + s % bs;
      const float* v = p.v_cache + slot * d;
      for (int32_t g = 0; g < group; ++g) {
        const float e = w[g * n + s];
        if (e == 0.0f) continue;
        simd::Axpy(p.out + t * os + static_cast<int64_t>(kvh * group + g) * d, e, v, d);
      }
    }
    for (int32_t g = 0; g < group; ++g) {
      float* o = p.out + t * os + static_cast<int64_t>(kvh * group + g) * d;
      const float inv = sum[g] > 0.0 ? static_cast<float>(1.0 / sum[g]) : 0.0f;
      for (int32_t i = 0; i < d; ++i) o[i] *= inv;
    }
    // Optional probabilities hook.
    if (p.probs != nullptr && t >= p.probs_first_query) {
      for (int32_t g = 0; g < group; ++g) {
        const int32_t qh = kvh * group + g;
        float* pr = p.probs + (static_cast<int64_t>(t - p.probs_first_query) * p.num_q_heads + qh) *
                                  p.probs_stride;
        const float inv = sum[g] > 0.0 ? static_cast<float>(1.0 / sum[g]) : 0.0f;
        const int32_t lim = static_cast<int32_t>(std::min<int64_t>(n, p.probs_stride));
        for (int32_t s = 0; s < lim; ++s) pr[s] = w[g * n + s] * inv;
        for (int64_t s = lim; s < p.probs_stride; ++s) pr[s] = 0.0f;
      }
    }
  }
}

}  // namespace internal

void PagedAttention(const PagedAttentionParams& p) {
  if (p.num_queries <= 0 || p.num_kv_heads <= 0) return;
  KVC_DCHECK(p.num_q_heads % p.num_kv_heads == 0);
  KVC_DCHECK(p.block_size > 0 && p.head_dim > 0);
  KVC_DCHECK(p.probs == nullptr || p.probs_stride > 0);
  const int64_t items = static_cast<int64_t>(p.num_kv_heads) * p.num_queries;
  // Cost of one item ~ group * num_kvs * head_dim * 4 flops; aim for >= ~256k flops a chunk.
  int64_t max_kvs = 1;
  for (int32_t h = 0; h < p.num_kv_heads; ++h) max_kvs = std::max<int64_t>(max_kvs, p.num_kvs[h]);
  const int64_t item_flops =
      4LL * (p.num_q_heads / p.num_kv_heads) * max_kvs * std::max(p.head_dim, 1);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 18) / item_flops);
  ParallelFor(items, min_chunk, [&](int64_t begin, int64_t end) {
    internal::AttentionScratch scratch;
    internal::PagedAttentionItems(p, begin, end, &scratch);
  });
}

}  // namespace kvc::cpu
