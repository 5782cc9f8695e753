// CPU references of the CUDA kernels, on the same (bf16-rounded) inputs, in fp32/fp64.
//
// Attention outputs come from the project's reference kernel cpu::PagedAttention (same
// definition: per-head tables, causal by stored position, GQA); its probabilities hook gives
// the exact normalised p used by the score references. What kernels/cpu does not have is
// written here naively: the log-sum-exp, the KV-Compress decode and window scores (squared
// probabilities, max-pooling along slot order, sum over the query group) and the KV append.
#ifndef KVC_TESTS_GPU_REFERENCE_H_
#define KVC_TESTS_GPU_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvc::gpu_test {

struct FloatPool {
  std::vector<float> k, v;
};
inline FloatPool ToFloatPool(const PagedFixture& f) { return {ToFloat(f.k), ToFloat(f.v)}; }

// cpu::PagedAttention over the heads of sequence s: q [nq, num_q_heads * d] fp32. Returns out
// [nq, num_q_heads * d]. With `probs`, fills p of queries >= probs_first (see attention.h).
inline std::vector<float> CpuAttention(const PagedFixture& f, const FloatPool& pool, int s,
                                       int num_q_heads, const float* q, const int32_t* q_pos,
                                       int nq, float scale, std::vector<float>* probs = nullptr,
                                       int probs_first = 0, int64_t probs_stride = 0) {
  const int H = f.num_kv_heads;
  std::vector<const int32_t*> tables(H);
  std::vector<int32_t> counts(H);
  for (int h = 0; h < H; ++h) {
    tables[h] = f.block_ids.data() + f.table_offsets[s * H + h];
    counts[h] = f.num_kvs[s * H + h];
  }
  std::vector<float> out(static_cast<size_t>(nq) * num_q_heads * f.head_dim, -1.0f);
  cpu::PagedAttentionParams p;
  p.num_queries = nq;
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = H;
  p.head_dim = f.head_dim;
  p.block_size = f.block_size;
  p.scale = scale;
  p.q = q;
  p.q_positions = q_pos;
  p.k_cache = pool.k.data();
  p.v_cache = pool.v.data();
  p.kv_positions = f.positions.data();
  p.block_tables = tables.data();
  p.num_kvs = counts.data();
  p.out = out.data();
  if (probs != nullptr) {
    probs->assign(static_cast<size_t>(nq - probs_first) * num_q_heads * probs_stride, 0.0f);
    p.probs = probs->data();
    p.probs_first_query = probs_first;
    p.probs_stride = probs_stride;
  }
  cpu::PagedAttention(p);
  return out;
}

// log sum_{visible slots} exp(scale q.k) of one query row q [d] against head hd, fp64;
// -inf when nothing is visible.
inline double NaiveLse(const PagedFixture& f, const FloatPool& pool, int hd, const float* q,
                       int32_t qpos, float scale) {
  const int d = f.head_dim;
  std::vector<double> logits;
  for (int i = 0; i < f.num_kvs[hd]; ++i) {
    const int64_t slot = f.Slot(hd, i);
    if (f.positions[slot] > qpos) continue;
    double dot = 0.0;
    for (int x = 0; x < d; ++x) dot += static_cast<double>(q[x]) * pool.k[slot * d + x];
    logits.push_back(dot * scale);
  }
  if (logits.empty()) return -std::numeric_limits<double>::infinity();
  const double m = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (double l : logits) sum += std::exp(l - m);
  return m + std::log(sum);
}

// Decode scores: delta[slot] = sum_{g in group} p_g(slot)^2 for the one query of each sequence
// (all KVs visible). q [S, num_q_heads * d]. Returns the per-physical-slot delta.
inline std::vector<double> DecodeScoreDelta(const PagedFixture& f, const FloatPool& pool,
                                            int num_q_heads, const std::vector<float>& q,
                                            float scale) {
  const int H = f.num_kv_heads;
  const int G = num_q_heads / H;
  std::vector<double> delta(f.positions.size(), 0.0);
  for (int s = 0; s < f.num_seqs; ++s) {
    int64_t stride = 1;
    for (int h = 0; h < H; ++h) stride = std::max<int64_t>(stride, f.num_kvs[s * H + h]);
    std::vector<float> probs;
    const int32_t qpos = std::numeric_limits<int32_t>::max();
    CpuAttention(f, pool, s, num_q_heads,
                 q.data() + static_cast<size_t>(s) * num_q_heads * f.head_dim, &qpos, 1, scale,
                 &probs, 0, stride);
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < f.num_kvs[s * H + h]; ++i) {
        double sum = 0.0;
        for (int g = 0; g < G; ++g) {
          const double pr = probs[static_cast<size_t>(h * G + g) * stride + i];
          sum += pr * pr;
        }
        delta[f.Slot(s * H + h, i)] += sum;
      }
    }
  }
  return delta;
}

// Window scores (KV-Compress prefill): for each sequence, the last w' = min(window, nq) queries;
// A_j(k) = sum_q p_j(q,k)^2; max-pool along slot order (kernel pool_kernel, pad kernel/2, edges
// padded with -inf); delta[slot(k)] = sum_j pooled A_j(k). q [num_tokens, num_q_heads * d].
inline std::vector<double> WindowScoreDelta(const PagedFixture& f, const FloatPool& pool,
                                            int num_q_heads, const std::vector<float>& q,
                                            const std::vector<int32_t>& cu_q,
                                            const std::vector<int32_t>& q_pos, float scale,
                                            int window, int pool_kernel) {
  const int H = f.num_kv_heads;
  const int G = num_q_heads / H;
  const int d = f.head_dim;
  const int pad = pool_kernel > 1 ? pool_kernel / 2 : 0;
  std::vector<double> delta(f.positions.size(), 0.0);
  for (int s = 0; s < f.num_seqs; ++s) {
    const int nq = cu_q[s + 1] - cu_q[s];
    if (nq == 0) continue;
    const int wq = std::min(window, nq);
    int64_t stride = 1;
    for (int h = 0; h < H; ++h) stride = std::max<int64_t>(stride, f.num_kvs[s * H + h]);
    std::vector<float> probs;
    CpuAttention(f, pool, s, num_q_heads, q.data() + static_cast<size_t>(cu_q[s]) * num_q_heads * d,
                 q_pos.data() + cu_q[s], nq, scale, &probs, nq - wq, stride);
    for (int h = 0; h < H; ++h) {
      const int n = f.num_kvs[s * H + h];
      std::vector<double> total(n, 0.0);
      for (int j = 0; j < G; ++j) {
        std::vector<double> a(n, 0.0);
        for (int qi = 0; qi < wq; ++qi) {
          const float* pr =
              probs.data() + (static_cast<size_t>(qi) * num_q_heads + h * G + j) * stride;
          for (int k = 0; k < n; ++k) a[k] += static_cast<double>(pr[k]) * pr[k];
        }
        for (int k = 0; k < n; ++k) {
          double mx = -std::numeric_limits<double>::infinity();
          for (int kk = std::max(0, k - pad); kk <= std::min(n - 1, k + pad); ++kk) {
            mx = std::max(mx, a[kk]);
          }
          total[k] += mx;
        }
      }
      for (int k = 0; k < n; ++k) delta[f.Slot(s * H + h, k)] += total[k];
    }
  }
  return delta;
}

}  // namespace kvc::gpu_test

#endif  // KVC_TESTS_GPU_REFERENCE_H_
