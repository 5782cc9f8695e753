#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvc {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> RandomLogits(std::mt19937* gen, int n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(*gen);
  return v;
}

// Softmax of logits / t restricted to `allowed` (renormalised), in double.
std::vector<double> Expected(const std::vector<float>& logits, double t,
                             const std::vector<bool>& allowed) {
  double max_value = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (allowed[i]) max_value = std::max(max_value, static_cast<double>(logits[i]));
  }
  std::vector<double> p(logits.size(), 0.0);
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (allowed[i]) total += p[i] = std::exp((logits[i] - max_value) / t);
  }
  for (double& x : p) x /= total;
  return p;
}

// Draws `draws` tokens and returns Pearson's chi-square statistic against `expected`; tokens with
// expected probability 0 must never be drawn.
double ChiSquare(const std::vector<float>& logits, const SamplingOptions& options,
                 const std::vector<double>& expected, int draws, uint64_t seed) {
  Rng rng(seed);
  Sampler sampler;
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    const int32_t tok = sampler.Sample(logits, options, &rng);
    EXPECT_GE(tok, 0);
    EXPECT_LT(tok, static_cast<int32_t>(logits.size()));
    ++counts[tok];
  }
  double chi2 = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double e = expected[i] * draws;
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

// Chi-square critical values at p = 1e-6 for small degrees of freedom (df = index).
constexpr double kChi2Critical[] = {0, 23.9, 27.6, 30.7, 33.4, 35.9, 38.3, 40.5, 42.7, 44.8};

TEST(SamplingOptionsTest, ValidateNamesField) {
  EXPECT_TRUE(ValidateSamplingOptions({}).ok());
  EXPECT_TRUE(ValidateSamplingOptions({0.0f, 1.0f, 0}).ok());
  auto st = ValidateSamplingOptions({-1.0f, 1.0f, 0});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("temperature"), std::string::npos);
  EXPECT_NE(ValidateSamplingOptions({kNaN, 1.0f, 0}).message().find("temperature"),
            std::string::npos);
  EXPECT_NE(ValidateSamplingOptions({kInf, 1.0f, 0}).message().find("temperature"),
            std::string::npos);
  EXPECT_NE(ValidateSamplingOptions({1.0f, 0.0f, 0}).message().find("top_p"), std::string::npos);
  EXPECT_NE(ValidateSamplingOptions({1.0f, 1.5f, 0}).message().find("top_p"), std::string::npos);
  EXPECT_NE(ValidateSamplingOptions({1.0f, 1.0f, -3}).message().find("top_k"), std::string::npos);
}

TEST(RngTest, SameSeedSameStreamDifferentSeedDifferentStream) {
  Rng a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.NextU64();
    EXPECT_EQ(x, b.NextU64());
    differs |= x != c.NextU64();
  }
  EXPECT_TRUE(differs);
}

TEST(RngTest, NextDoubleIsUniformInUnitInterval) {
  Rng rng(1);
  const int n = 200000;
  std::vector<int> buckets(10, 0);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.NextDouble();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    ++buckets[static_cast<int>(u * 10)];
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  double chi2 = 0;
  for (int c : buckets) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
  EXPECT_LT(chi2, kChi2Critical[9]);
}

TEST(SamplingTest, GreedyTakesArgmaxWithLowestIndexOnTies) {
  Rng rng(0);
  const SamplingOptions greedy{0.0f, 1.0f, 0};
  EXPECT_EQ(SampleToken(std::vector<float>{0.1f, 3.0f, -2.0f, 3.0f}, greedy, &rng), 1);
  EXPECT_EQ(SampleToken(std::vector<float>{5.0f}, greedy, &rng), 0);
  EXPECT_EQ(SampleToken(std::vector<float>{kNaN, 1.0f, kNaN, 2.0f}, greedy, &rng), 3);
  EXPECT_EQ(SampleToken(std::vector<float>{1.0f, kInf, kInf}, greedy, &rng), 1);
  EXPECT_EQ(SampleToken(std::vector<float>{-kInf, -1e30f, -kInf}, greedy, &rng), 1);
  EXPECT_EQ(SampleToken(std::vector<float>{}, greedy, &rng), -1);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{2.0f, kNaN, 7.0f, 7.0f}), 2);
}

TEST(SamplingTest, AllNaNOrNegInfGivesIndexZeroInEveryMode) {
  Rng rng(3);
  const std::vector<float> nans = {kNaN, kNaN, kNaN};
  const std::vector<float> neg = {-kInf, kNaN, -kInf};
  for (const SamplingOptions& o : {SamplingOptions{0.0f, 1.0f, 0}, SamplingOptions{1.0f, 1.0f, 0},
                                   SamplingOptions{0.8f, 0.9f, 2}}) {
    EXPECT_EQ(SampleToken(nans, o, &rng), 0);
    EXPECT_EQ(SampleToken(neg, o, &rng), 0);
  }
}

TEST(SamplingTest, NaNAndNegInfTokensAreNeverSampled) {
  Rng rng(5);
  Sampler sampler;
  const std::vector<float> logits = {kNaN, 0.5f, -kInf, 0.4f, kNaN, 0.6f};
  for (const SamplingOptions& o : {SamplingOptions{1.0f, 1.0f, 0}, SamplingOptions{2.0f, 0.99f, 0},
                                   SamplingOptions{5.0f, 1.0f, 5}}) {
    for (int i = 0; i < 2000; ++i) {
      const int32_t t = sampler.Sample(logits, o, &rng);
      ASSERT_TRUE(t == 1 || t == 3 || t == 5) << t;
    }
  }
}

TEST(SamplingTest, PositiveInfinityTokensShareTheMass) {
  const std::vector<float> logits = {1.0f, kInf, 3.0f, kInf};
  const std::vector<double> expected = {0, 0.5, 0, 0.5};
  EXPECT_LT(ChiSquare(logits, {1.0f, 1.0f, 0}, expected, 20000, 9), kChi2Critical[1]);
  EXPECT_LT(ChiSquare(logits, {1.0f, 1.0f, 3}, expected, 20000, 10), kChi2Critical[1]);
}

TEST(SamplingTest, TopKOneAndTinyTopPEqualGreedy) {
  std::mt19937 gen(17);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<float> logits = RandomLogits(&gen, 1 + gen() % 50, 3.0f);
    // Create ties with the maximum sometimes.
    if (trial % 3 == 0 && logits.size() > 2) logits[logits.size() - 1] = logits[1];
    const int32_t greedy = ArgmaxToken(logits);
    Rng rng(trial);
    EXPECT_EQ(SampleToken(logits, {1.0f, 1.0f, 1}, &rng), greedy);
    EXPECT_EQ(SampleToken(logits, {1.3f, 1e-7f, 0}, &rng), greedy);
    EXPECT_EQ(SampleToken(logits, {0.7f, 1e-7f, 10}, &rng), greedy);
    EXPECT_EQ(SampleToken(logits, {0.0f, 0.5f, 4}, &rng), greedy);
  }
}

TEST(SamplingTest, SeededDeterminism) {
  std::mt19937 gen(23);
  const std::vector<float> logits = RandomLogits(&gen, 1000, 2.0f);
  for (const SamplingOptions& o : {SamplingOptions{1.0f, 1.0f, 0}, SamplingOptions{0.8f, 0.9f, 0},
                                   SamplingOptions{1.2f, 0.95f, 40}}) {
    Rng a(99), b(99), c(100);
    Sampler sa, sb;
    std::vector<int32_t> ta, tb, tc;
    for (int i = 0; i < 200; ++i) {
      ta.push_back(sa.Sample(logits, o, &a));
      tb.push_back(sb.Sample(logits, o, &b));
      tc.push_back(SampleToken(logits, o, &c));
    }
    EXPECT_EQ(ta, tb);
    EXPECT_NE(ta, tc);
    EXPECT_GT(std::set<int32_t>(ta.begin(), ta.end()).size(), 5u);
  }
}

TEST(SamplingTest, FrequenciesMatchSoftmaxWithTemperature) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
  const std::vector<bool> all(logits.size(), true);
  for (float t : {1.0f, 0.5f, 2.5f}) {
    const auto expected = Expected(logits, t, all);
    EXPECT_LT(ChiSquare(logits, {t, 1.0f, 0}, expected, 100000, 1000 + static_cast<int>(t * 10)),
              kChi2Critical[5])
        << "temperature " << t;
  }
}

TEST(SamplingTest, FrequenciesAreWrongForAWrongModel) {
  // The chi-square check has power: sampling at t=1 does not pass for the t=2 distribution.
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
  const auto wrong = Expected(logits, 2.0, std::vector<bool>(logits.size(), true));
  EXPECT_GT(ChiSquare(logits, {1.0f, 1.0f, 0}, wrong, 100000, 7), 10 * kChi2Critical[5]);
}

TEST(SamplingTest, TopKRestrictsAndRenormalises) {
  // Ties at the k boundary: logits[2] == logits[4] == 1.0; lower index (2) is kept.
  const std::vector<float> logits = {3.0f, 0.2f, 1.0f, 2.0f, 1.0f, -0.5f};
  const std::vector<bool> top3 = {true, false, true, true, false, false};
  const auto expected = Expected(logits, 0.9, top3);
  EXPECT_LT(ChiSquare(logits, {0.9f, 1.0f, 3}, expected, 100000, 31), kChi2Critical[2]);
  // k larger than the vocabulary is no restriction.
  const auto full = Expected(logits, 1.0, std::vector<bool>(logits.size(), true));
  EXPECT_LT(ChiSquare(logits, {1.0f, 1.0f, 100}, full, 100000, 32), kChi2Critical[5]);
}

TEST(SamplingTest, TopPKeepsSmallestPrefixReachingTheMass) {
  // Probabilities at t=1 are proportional to exp(logit); sorted: 0 (0.6439), 3 (0.2369),
  // 2 (0.0871), 1 (0.0321). top_p=0.85 keeps {0, 3} (0.8808 >= 0.85); top_p=0.9 adds 2.
  const std::vector<float> logits = {3.0f, 0.0f, 1.0f, 2.0f};
  const auto p = Expected(logits, 1.0, std::vector<bool>(4, true));
  ASSERT_LT(p[0] + p[3], 0.9);
  ASSERT_GT(p[0] + p[3], 0.85);
  EXPECT_LT(ChiSquare(logits, {1.0f, 0.85f, 0}, Expected(logits, 1.0, {true, false, false, true}),
                      100000, 41),
            kChi2Critical[1]);
  EXPECT_LT(ChiSquare(logits, {1.0f, 0.9f, 0}, Expected(logits, 1.0, {true, false, true, true}),
                      100000, 42),
            kChi2Critical[2]);
  // top-k first, then top-p on the renormalised top-k mass: k=2 gives {0: 0.731, 3: 0.269};
  // top_p=0.7 keeps only token 0.
  Rng rng(43);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(SampleToken(logits, {1.0f, 0.7f, 2}, &rng), 0);
}

TEST(SamplingTest, LargeVocabularyTopKStaysInTopK) {
  std::mt19937 gen(77);
  const std::vector<float> logits = RandomLogits(&gen, 32000, 4.0f);
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const std::set<int32_t> top50(idx.begin(), idx.begin() + 50);
  Rng rng(1);
  Sampler sampler;
  std::set<int32_t> seen;
  for (int i = 0; i < 3000; ++i) {
    const int32_t t = sampler.Sample(logits, {3.0f, 1.0f, 50}, &rng);
    ASSERT_EQ(top50.count(t), 1u) << t;
    seen.insert(t);
  }
  // At t=3 the 50 kept tokens are close in probability: most of them show up.
  EXPECT_GT(seen.size(), 25u);
}

}  // namespace
}  // namespace kvc
