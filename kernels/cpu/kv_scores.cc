#include "kernels/cpu/kv_scores.h"

#include <algorithm>
#include <vector>

#include "common/check.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc::cpu {

void AccumulateKvScores(const KvScoreParams& p) {
  KVC_CHECK_GT(p.num_kv_heads, 0);
  KVC_CHECK_EQ(p.num_q_heads % p.num_kv_heads, 0);
  if (p.num_queries <= 0) return;
  const int32_t group = p.num_q_heads / p.num_kv_heads;
  const int32_t half = p.pool_kernel > 1 ? p.pool_kernel / 2 : 0;
  ParallelFor(p.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a, pooled, total;
    for (int64_t h = begin; h < end; ++h) {
      const int32_t n = p.num_kvs[h];
      if (n <= 0) continue;
      KVC_CHECK_LE(n, p.probs_stride);
      total.assign(n, 0.0f);
      for (int32_t g = 0; g < group; ++g) {
        const int32_t j = static_cast<int32_t>(h) * group + g;
        a.assign(n, 0.0f);
        for (int32_t q = 0; q < p.num_queries; ++q) {
          const float* row =
              p.probs + (static_cast<int64_t>(q) * p.num_q_heads + j) * p.probs_stride;
          for (int32_t s = 0; s < n; ++s) a[s] += row[s] * row[s];
        }
        if (half > 0) {
          pooled.assign(n, 0.0f);
          for (int32_t s = 0; s < n; ++s) {
            const int32_t lo = std::max(0, s - half), hi = std::min(n - 1, s + half);
            float m = a[lo];
            for (int32_t t = lo + 1; t <= hi; ++t) m = std::max(m, a[t]);
            pooled[s] = m;
          }
          a.swap(pooled);
        }
        for (int32_t s = 0; s < n; ++s) total[s] += a[s];
      }
      const int32_t* table = p.block_tables[h];
      for (int32_t s = 0; s < n; ++s) {
        p.scores[static_cast<int64_t>(table[s / p.block_size]) * p.block_size + s % p.block_size] +=
            total[s];
      }
    }
  });
}

}  // namespace kvc::cpu
