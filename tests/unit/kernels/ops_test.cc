// Tests of the CPU reference ops against naive inline formulas (double precision) on random
// inputs: matmul, RMSNorm (+ fused residual), RoPE (plain and llama3), SwiGLU, embedding, and
// the thread pool they run on.
#include "kernels/cpu/ops.h"

#include <atomic>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc::cpu {
namespace {

std::vector<float> RandomVec(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ---- matmul ----------------------------------------------------------------------------------

struct MatmulCase {
  int rows, in, out;
};

TEST(MatmulTest, MatchesNaiveForManyShapes) {
  std::mt19937 rng(1);
  const MatmulCase cases[] = {{1, 1, 1},    {1, 8, 3},     {2, 7, 5},    {3, 9, 2},
                              {4, 16, 4},   {5, 17, 7},    {7, 64, 33},  {9, 100, 130},
                              {64, 64, 64}, {65, 72, 129}, {130, 33, 70}};
  for (const MatmulCase& c : cases) {
    for (int variant = 0; variant < 3; ++variant) {
      const bool use_bias = variant >= 1, accumulate = variant == 2;
      const int64_t xs = c.in + 3, ys = c.out + 5;  // strided rows
      auto x = RandomVec(rng, c.rows * xs);
      auto w = RandomVec(rng, static_cast<size_t>(c.out) * c.in);
      auto bias = RandomVec(rng, c.out);
      auto y = RandomVec(rng, c.rows * ys);
      const auto y0 = y;
      MatmulParams p;
      p.rows = c.rows;
      p.in = c.in;
      p.out = c.out;
      p.x = x.data();
      p.x_stride = xs;
      p.w = w.data();
      p.bias = use_bias ? bias.data() : nullptr;
      p.y = y.data();
      p.y_stride = ys;
      p.accumulate = accumulate;
      Matmul(p);
      for (int r = 0; r < c.rows; ++r) {
        for (int o = 0; o < c.out; ++o) {
          double ref = 0, mag = 0;
          for (int k = 0; k < c.in; ++k) {
            ref += double(x[r * xs + k]) * w[o * c.in + k];
            mag += std::fabs(double(x[r * xs + k]) * w[o * c.in + k]);
          }
          if (use_bias) ref += bias[o], mag += std::fabs(bias[o]);
          if (accumulate) ref += y0[r * ys + o], mag += std::fabs(y0[r * ys + o]);
          ASSERT_NEAR(y[r * ys + o], ref, 1e-5 * mag + 1e-6)
              << c.rows << "x" << c.in << "x" << c.out << " variant " << variant << " r=" << r
              << " o=" << o;
        }
        // Padding between rows is untouched.
        for (int64_t o = c.out; o < ys; ++o) ASSERT_EQ(y[r * ys + o], y0[r * ys + o]);
      }
    }
  }
}

TEST(MatmulTest, RowResultDoesNotDependOnBatchSize) {
  std::mt19937 rng(2);
  const int rows = 11, in = 75, out = 97;
  auto x = RandomVec(rng, rows * in);
  auto w = RandomVec(rng, out * in);
  std::vector<float> batched(rows * out), single(out);
  MatmulParams p;
  p.rows = rows;
  p.in = in;
  p.out = out;
  p.x = x.data();
  p.w = w.data();
  p.y = batched.data();
  Matmul(p);
  for (int r = 0; r < rows; ++r) {
    MatmulParams q = p;
    q.rows = 1;
    q.x = x.data() + r * in;
    q.y = single.data();
    Matmul(q);
    for (int o = 0; o < out; ++o) ASSERT_EQ(single[o], batched[r * out + o]) << r << " " << o;
  }
}

TEST(MatmulTest, DotMatchesNaive) {
  std::mt19937 rng(3);
  for (int n : {0, 1, 7, 8, 9, 16, 31, 64, 129}) {
    auto a = RandomVec(rng, n), b = RandomVec(rng, n);
    double ref = 0;
    for (int i = 0; i < n; ++i) ref += double(a[i]) * b[i];
    EXPECT_NEAR(Dot(a.data(), b.data(), n), ref, 1e-5 * (1 + std::sqrt(double(n)))) << n;
  }
}

// ---- RMSNorm ---------------------------------------------------------------------------------

TEST(RmsNormTest, MatchesNaive) {
  std::mt19937 rng(4);
  const int rows = 5, dim = 67;
  const float eps = 1e-5f;
  auto x = RandomVec(rng, rows * dim, 3.0f);
  auto w = RandomVec(rng, dim);
  std::vector<float> out(rows * dim);
  RmsNormParams p;
  p.rows = rows;
  p.dim = dim;
  p.eps = eps;
  p.x = x.data();
  p.weight = w.data();
  p.out = out.data();
  RmsNorm(p);
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int i = 0; i < dim; ++i) {
      const double ref = x[r * dim + i] * inv * w[i];
      ASSERT_NEAR(out[r * dim + i], ref, 1e-6 * (1 + std::fabs(ref)));
    }
  }
}

TEST(RmsNormTest, FusedResidualAddUpdatesResidualAndNormalisesIt) {
  std::mt19937 rng(5);
  const int rows = 3, dim = 40;
  auto x = RandomVec(rng, rows * dim);
  auto res = RandomVec(rng, rows * dim);
  auto w = RandomVec(rng, dim);
  const auto res0 = res;
  std::vector<float> out(rows * dim);
  RmsNormParams p;
  p.rows = rows;
  p.dim = dim;
  p.eps = 1e-6f;
  p.x = x.data();
  p.weight = w.data();
  p.residual = res.data();
  p.out = out.data();
  RmsNorm(p);
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) {
      const double sum = double(res0[r * dim + i]) + x[r * dim + i];
      ASSERT_FLOAT_EQ(res[r * dim + i], static_cast<float>(sum));
      ss += sum * sum;
    }
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int i = 0; i < dim; ++i) {
      const double ref = (double(res0[r * dim + i]) + x[r * dim + i]) * inv * w[i];
      ASSERT_NEAR(out[r * dim + i], ref, 1e-6 * (1 + std::fabs(ref)));
    }
  }
}

// ---- RoPE ------------------------------------------------------------------------------------

// The llama3 rule in double precision (transformers' _compute_llama3_parameters).
std::vector<double> NaiveLlama3InvFreq(int dim, double theta, double factor, double low,
                                       double high, double old_ctx) {
  std::vector<double> inv(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const double f = 1.0 / std::pow(theta, 2.0 * i / dim);
    const double wavelen = 2 * M_PI / f;
    if (wavelen < old_ctx / high) {
      inv[i] = f;  // high frequency: kept
    } else if (wavelen > old_ctx / low) {
      inv[i] = f / factor;  // low frequency: scaled
    } else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      inv[i] = (1 - smooth) * f / factor + smooth * f;
    }
  }
  return inv;
}

TEST(RopeTest, InvFreqPlainAndLlama3) {
  RopeFrequencyParams p;
  p.head_dim = 64;
  p.theta = 500000.0;
  auto plain = RopeInvFreq(p);
  ASSERT_EQ(plain.size(), 32u);
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR(plain[i], 1.0 / std::pow(500000.0, 2.0 * i / 64), 2e-7 * plain[i]) << i;
  }
  p.llama3 = true;
  p.factor = 8.0;
  p.low_freq_factor = 1.0;
  p.high_freq_factor = 4.0;
  p.original_max_position_embeddings = 8192;
  auto scaled = RopeInvFreq(p);
  auto ref = NaiveLlama3InvFreq(64, 500000.0, 8.0, 1.0, 4.0, 8192);
  int kept = 0, divided = 0, smoothed = 0;
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR(scaled[i], ref[i], 1e-6 * ref[i]) << i;
    const double r = ref[i] / (1.0 / std::pow(500000.0, 2.0 * i / 64));
    if (std::fabs(r - 1) < 1e-9)
      ++kept;
    else if (std::fabs(r - 1.0 / 8) < 1e-9)
      ++divided;
    else
      ++smoothed;
  }
  // All three bands occur with these parameters.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
}

TEST(RopeTest, RotatesHalvesByPosition) {
  std::mt19937 rng(6);
  const int tokens = 6, heads = 3, dim = 16;
  const int64_t stride = 5 + heads * dim + 7;  // heads at offset 5 of a wider row
  RopeFrequencyParams fp;
  fp.head_dim = dim;
  fp.theta = 10000.0;
  fp.llama3 = true;
  fp.factor = 8;
  fp.original_max_position_embeddings = 64;
  auto inv = RopeInvFreq(fp);
  std::vector<int32_t> pos = {0, 1, 7, 63, 511, 4097};
  auto x = RandomVec(rng, tokens * stride);
  const auto x0 = x;
  RopeParams p;
  p.num_tokens = tokens;
  p.num_heads = heads;
  p.head_dim = dim;
  p.x = x.data();
  p.stride = stride;
  p.first_head_offset = 5;
  p.positions = pos.data();
  p.inv_freq = inv.data();
  Rope(p);
  for (int t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < 5; ++i) ASSERT_EQ(x[t * stride + i], x0[t * stride + i]);
    for (int h = 0; h < heads; ++h) {
      const int64_t base = t * stride + 5 + h * dim;
      for (int i = 0; i < dim / 2; ++i) {
        // The angle is one fp32 product (as in transformers); the rest in double.
        const double angle = static_cast<float>(pos[t]) * inv[i];
        const double a = x0[base + i], b = x0[base + i + dim / 2];
        const double tol = 1e-6 * (std::fabs(a) + std::fabs(b)) + 1e-7;
        ASSERT_NEAR(x[base + i], a * std::cos(angle) - b * std::sin(angle), tol);
        ASSERT_NEAR(x[base + i + dim / 2], b * std::cos(angle) + a * std::sin(angle), tol);
      }
    }
    for (int64_t i = 5 + heads * dim; i < stride; ++i)
      ASSERT_EQ(x[t * stride + i], x0[t * stride + i]);
  }
  // Position 0 is the identity; rotation preserves each pair's norm.
  for (int i = 0; i < heads * dim; ++i) EXPECT_FLOAT_EQ(x[5 + i], x0[5 + i]);
}

// ---- SwiGLU, embedding -----------------------------------------------------------------------

TEST(SwiGluTest, MatchesNaive) {
  std::mt19937 rng(7);
  const int rows = 4, dim = 37;
  auto gu = RandomVec(rng, rows * 2 * dim, 4.0f);
  std::vector<float> out(rows * dim);
  SwiGluParams p;
  p.rows = rows;
  p.dim = dim;
  p.gate = gu.data();
  p.gate_stride = 2 * dim;
  p.up = gu.data() + dim;
  p.up_stride = 2 * dim;
  p.out = out.data();
  SwiGlu(p);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < dim; ++i) {
      const double g = gu[r * 2 * dim + i], u = gu[r * 2 * dim + dim + i];
      const double ref = g / (1 + std::exp(-g)) * u;
      ASSERT_NEAR(out[r * dim + i], ref, 1e-6 * (1 + std::fabs(ref)));
    }
  }
}

TEST(EmbeddingTest, GathersRows) {
  std::mt19937 rng(8);
  const int vocab = 10, hidden = 6;
  auto table = RandomVec(rng, vocab * hidden);
  std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> out(ids.size() * (hidden + 2), -1.0f);
  EmbeddingParams p;
  p.num_tokens = static_cast<int32_t>(ids.size());
  p.hidden = hidden;
  p.ids = ids.data();
  p.table = table.data();
  p.out = out.data();
  p.out_stride = hidden + 2;
  Embedding(p);
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int i = 0; i < hidden; ++i)
      ASSERT_EQ(out[t * (hidden + 2) + i], table[ids[t] * hidden + i]);
    ASSERT_EQ(out[t * (hidden + 2) + hidden], -1.0f);
  }
}

// ---- thread pool -----------------------------------------------------------------------------

TEST(ThreadPoolTest, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 7, 100, 1001}) {
      for (int64_t min_chunk : {1, 3, 1000}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, min_chunk, [&](int64_t b, int64_t e) {
          ASSERT_LE(0, b);
          ASSERT_LE(b, e);
          ASSERT_LE(e, n);
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << i;
      }
    }
  }
}

TEST(ThreadPoolTest, NestedParallelForRunsInline) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  pool.ParallelFor(8, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      pool.ParallelFor(10, 1, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
    }
  });
  EXPECT_EQ(total.load(), 80);
}

}  // namespace
}  // namespace kvc::cpu
