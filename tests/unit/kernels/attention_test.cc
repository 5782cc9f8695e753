// Tests of cpu::PagedAttention against a dense softmax reference (double precision): GQA group
// sizes 1/2/4, head dims with and without an 8-lane tail, per-head block tables with shuffled
// block ids, per-head KV counts, out-of-order slots (positions permuted, as after compaction),
// prefill / chunk / decode queries, the probabilities hook and the no-visible-KV case.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvc::cpu {
namespace {

struct Problem {
  int num_q_heads, num_kv_heads, head_dim, block_size, num_blocks;
  std::vector<int> num_kvs;  // per kv head
  std::vector<int32_t> q_positions;
  bool shuffle_positions;  // slot order != position order
};

class AttentionFixture {
 public:
  AttentionFixture(const Problem& pr, uint32_t seed) : pr_(pr), rng_(seed) {
    const int d = pr.head_dim, bs = pr.block_size;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    k_.resize(static_cast<size_t>(pr.num_blocks) * bs * d);
    v_.resize(k_.size());
    for (float& x : k_) x = nd(rng_);
    for (float& x : v_) x = nd(rng_);
    pos_.assign(static_cast<size_t>(pr.num_blocks) * bs, 1 << 30);  // unused slots: far future
    // Distinct blocks for every head, in shuffled order.
    std::vector<int32_t> free(pr.num_blocks);
    std::iota(free.begin(), free.end(), 0);
    std::shuffle(free.begin(), free.end(), rng_);
    size_t next = 0;
    tables_.resize(pr.num_kv_heads);
    for (int h = 0; h < pr.num_kv_heads; ++h) {
      const int n = pr.num_kvs[h];
      for (int b = 0; b < (n + bs - 1) / bs; ++b) tables_[h].push_back(free.at(next++));
      std::vector<int32_t> p(n);
      std::iota(p.begin(), p.end(), 0);
      if (pr.shuffle_positions) std::shuffle(p.begin(), p.end(), rng_);
      for (int s = 0; s < n; ++s) pos_[Slot(h, s)] = p[s];
    }
    q_.resize(pr.q_positions.size() * pr.num_q_heads * d);
    for (float& x : q_) x = nd(rng_);
  }

  int64_t Slot(int h, int s) const {
    return static_cast<int64_t>(tables_[h][s / pr_.block_size]) * pr_.block_size +
           s % pr_.block_size;
  }

  PagedAttentionParams Params(std::vector<float>* out) {
    table_ptrs_.clear();
    for (auto& t : tables_) table_ptrs_.push_back(t.data());
    counts_.assign(pr_.num_kvs.begin(), pr_.num_kvs.end());
    out->assign(q_.size(), -7.0f);
    PagedAttentionParams p;
    p.num_queries = static_cast<int32_t>(pr_.q_positions.size());
    p.num_q_heads = pr_.num_q_heads;
    p.num_kv_heads = pr_.num_kv_heads;
    p.head_dim = pr_.head_dim;
    p.block_size = pr_.block_size;
    p.scale = 1.0f / std::sqrt(static_cast<float>(pr_.head_dim));
    p.q = q_.data();
    p.q_positions = pr_.q_positions.data();
    p.k_cache = k_.data();
    p.v_cache = v_.data();
    p.kv_positions = pos_.data();
    p.block_tables = table_ptrs_.data();
    p.num_kvs = counts_.data();
    p.out = out->data();
    return p;
  }

  // Dense reference for (query t, query head qh): output [d] and probabilities per slot.
  void Reference(int t, int qh, std::vector<double>* out, std::vector<double>* probs) const {
    const int d = pr_.head_dim;
    const int kvh = qh / (pr_.num_q_heads / pr_.num_kv_heads);
    const int n = pr_.num_kvs[kvh];
    const float* q = q_.data() + (static_cast<size_t>(t) * pr_.num_q_heads + qh) * d;
    std::vector<double> logits(n, -INFINITY);
    double mx = -INFINITY;
    for (int s = 0; s < n; ++s) {
      const int64_t slot = Slot(kvh, s);
      if (pos_[slot] > pr_.q_positions[t]) continue;
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[i]) * k_[slot * d + i];
      logits[s] = dot / std::sqrt(double(d));
      mx = std::max(mx, logits[s]);
    }
    probs->assign(n, 0.0);
    out->assign(d, 0.0);
    if (mx == -INFINITY) return;
    double sum = 0;
    for (int s = 0; s < n; ++s) {
      if (logits[s] == -INFINITY) continue;
      (*probs)[s] = std::exp(logits[s] - mx);
      sum += (*probs)[s];
    }
    for (int s = 0; s < n; ++s) {
      (*probs)[s] /= sum;
      for (int i = 0; i < d; ++i) (*out)[i] += (*probs)[s] * v_[Slot(kvh, s) * d + i];
    }
  }

  const Problem& problem() const { return pr_; }

 private:
  Problem pr_;
  std::mt19937 rng_;
  std::vector<float> k_, v_, q_;
  std::vector<int32_t> pos_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<const int32_t*> table_ptrs_;
  std::vector<int32_t> counts_;
};

void CheckAgainstReference(const Problem& pr, uint32_t seed, bool with_probs) {
  AttentionFixture f(pr, seed);
  std::vector<float> out;
  PagedAttentionParams p = f.Params(&out);
  const int nq = static_cast<int>(pr.q_positions.size());
  const int max_kvs = *std::max_element(pr.num_kvs.begin(), pr.num_kvs.end());
  const int first_prob = nq > 1 ? 1 : 0;
  std::vector<float> probs;
  if (with_probs) {
    p.probs_first_query = first_prob;
    p.probs_stride = max_kvs + 3;
    probs.assign(static_cast<size_t>(nq - first_prob) * pr.num_q_heads * p.probs_stride, -1.0f);
    p.probs = probs.data();
  }
  PagedAttention(p);
  std::vector<double> ref, ref_p;
  for (int t = 0; t < nq; ++t) {
    for (int qh = 0; qh < pr.num_q_heads; ++qh) {
      f.Reference(t, qh, &ref, &ref_p);
      for (int i = 0; i < pr.head_dim; ++i) {
        ASSERT_NEAR(out[(static_cast<size_t>(t) * pr.num_q_heads + qh) * pr.head_dim + i], ref[i],
                    2e-5)
            << "t=" << t << " qh=" << qh << " i=" << i;
      }
      if (with_probs && t >= first_prob) {
        const float* row =
            probs.data() +
            (static_cast<size_t>(t - first_prob) * pr.num_q_heads + qh) * p.probs_stride;
        double total = 0;
        for (int s = 0; s < p.probs_stride; ++s) {
          const double want = s < static_cast<int>(ref_p.size()) ? ref_p[s] : 0.0;
          ASSERT_NEAR(row[s], want, 1e-6) << "t=" << t << " qh=" << qh << " s=" << s;
          total += row[s];
        }
        if (!ref_p.empty() && *std::max_element(ref_p.begin(), ref_p.end()) > 0) {
          EXPECT_NEAR(total, 1.0, 1e-5);
        }
      }
    }
  }
}

TEST(PagedAttentionTest, PrefillCausalInOrderSlots) {
  // A fresh prefill: slot i holds position i, queries at every position.
  Problem pr{4, 2, 16, 4, 20, {13, 13}, {}, false};
  for (int i = 0; i < 13; ++i) pr.q_positions.push_back(i);
  CheckAgainstReference(pr, 1, /*with_probs=*/true);
}

TEST(PagedAttentionTest, GqaGroupsAndHeadDims) {
  for (int group : {1, 2, 4}) {
    for (int d : {8, 20, 64}) {
      for (int bs : {1, 8, 16}) {
        Problem pr{2 * group, 2, d, bs, 64, {29, 17}, {3, 16, 28, 40}, true};
        SCOPED_TRACE(testing::Message() << "group " << group << " d " << d << " bs " << bs);
        CheckAgainstReference(pr, 100 + group * 10 + d + bs, /*with_probs=*/group == 2);
      }
    }
  }
}

TEST(PagedAttentionTest, OutOfOrderSlotsAfterCompaction) {
  // Positions permuted across slots and heads of different lengths; queries see only KVs at
  // positions <= theirs wherever those sit.
  Problem pr{8, 4, 32, 8, 80, {50, 7, 33, 64}, {0, 5, 31, 49, 63, 100}, true};
  CheckAgainstReference(pr, 7, /*with_probs=*/true);
}

TEST(PagedAttentionTest, DecodeSingleQuery) {
  Problem pr{4, 1, 64, 16, 10, {150}, {149}, true};
  CheckAgainstReference(pr, 9, /*with_probs=*/true);
}

TEST(PagedAttentionTest, LargeThreadedProblem) {
  Problem pr{8, 2, 64, 16, 64, {300, 250}, {}, true};
  for (int i = 0; i < 96; ++i) pr.q_positions.push_back(i * 3);
  CheckAgainstReference(pr, 11, /*with_probs=*/false);
}

TEST(PagedAttentionTest, QueryThatSeesNothingGetsZeros) {
  Problem pr{2, 1, 16, 4, 4, {6}, {-1, 2}, false};
  AttentionFixture f(pr, 3);
  std::vector<float> out;
  PagedAttentionParams p = f.Params(&out);
  std::vector<float> probs(2 * 2 * 6, -1.0f);
  p.probs = probs.data();
  p.probs_stride = 6;
  PagedAttention(p);
  for (int i = 0; i < 2 * 16; ++i) EXPECT_EQ(out[i], 0.0f) << i;  // query 0, both heads
  for (int s = 0; s < 12; ++s) EXPECT_EQ(probs[s], 0.0f) << s;
  // Query 1 at position 2 sees exactly slots 0..2.
  for (int qh = 0; qh < 2; ++qh) {
    const float* row = probs.data() + (2 + qh) * 6;
    EXPECT_GT(row[0] + row[1] + row[2], 0.999f);
    EXPECT_EQ(row[3], 0.0f);
    EXPECT_EQ(row[5], 0.0f);
  }
}

TEST(PagedAttentionTest, SlotOrderDoesNotChangeTheResult) {
  // The same KVs stored in two different slot orders give the same output (up to rounding).
  Problem pr{4, 2, 16, 4, 40, {21, 21}, {20}, false};
  AttentionFixture a(pr, 21);
  std::vector<float> out_a;
  PagedAttentionParams pa = a.Params(&out_a);
  PagedAttention(pa);
  // Reverse the slots of every head in place (K, V and positions move together).
  std::vector<float> k(pa.k_cache, pa.k_cache + 40 * 4 * 16),
      v(pa.v_cache, pa.v_cache + 40 * 4 * 16);
  std::vector<int32_t> pos(pa.kv_positions, pa.kv_positions + 40 * 4);
  std::vector<float> k2 = k, v2 = v;
  std::vector<int32_t> pos2 = pos;
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 21; ++s) {
      const int64_t from = a.Slot(h, s), to = a.Slot(h, 20 - s);
      std::copy_n(&k[from * 16], 16, &k2[to * 16]);
      std::copy_n(&v[from * 16], 16, &v2[to * 16]);
      pos2[to] = pos[from];
    }
  }
  std::vector<float> out_b(out_a.size());
  PagedAttentionParams pb = pa;
  pb.k_cache = k2.data();
  pb.v_cache = v2.data();
  pb.kv_positions = pos2.data();
  pb.out = out_b.data();
  PagedAttention(pb);
  for (size_t i = 0; i < out_a.size(); ++i) EXPECT_NEAR(out_a[i], out_b[i], 1e-5) << i;
}

}  // namespace
}  // namespace kvc::cpu
