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

// ---- CounterUniform / SampleTokenWithUniform ---------------------------------------------------

TEST(CounterUniformTest, InUnitIntervalDeterministicAndKeyed) {
  std::set<double> seen;
  for (uint64_t seed : {0ull, 1ull, 2ull, 0xFFFFFFFFFFFFFFFFull}) {
    for (uint64_t counter = 0; counter < 1000; ++counter) {
      const double u = CounterUniform(seed, counter);
      ASSERT_GE(u, 0.0);
      ASSERT_LT(u, 1.0);
      ASSERT_EQ(u, CounterUniform(seed, counter));
      seen.insert(u);
    }
  }
  // Neighbouring seeds and counters give different values (no collisions in 4000 draws).
  EXPECT_EQ(seen.size(), 4000u);
}

TEST(CounterUniformTest, UniformAndUncorrelatedAlongCountersAndSeeds) {
  const int n = 200000;
  for (bool vary_seed : {false, true}) {
    std::vector<int> buckets(10, 0);
    double sum = 0, lag = 0, prev = 0;
    for (int i = 0; i < n; ++i) {
      const double u = vary_seed ? CounterUniform(static_cast<uint64_t>(i), 7)
                                 : CounterUniform(12345, static_cast<uint64_t>(i));
      sum += u;
      if (i > 0) lag += (u - 0.5) * (prev - 0.5);
      prev = u;
      ++buckets[static_cast<int>(u * 10)];
    }
    EXPECT_NEAR(sum / n, 0.5, 0.005) << "vary_seed " << vary_seed;
    // Lag-1 correlation of a uniform has variance 1/n around 0 (|corr| < 5 sigma).
    EXPECT_LT(std::fabs(lag / (n - 1) * 12.0), 5.0 / std::sqrt(static_cast<double>(n)));
    double chi2 = 0;
    for (int c : buckets) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
    EXPECT_LT(chi2, kChi2Critical[9]) << "vary_seed " << vary_seed;
  }
}

TEST(SampleTokenWithUniformTest, EqualsSamplerFedTheSameDraw) {
  std::mt19937 gen(101);
  const SamplingOptions options[] = {{1.0f, 1.0f, 0}, {0.7f, 1.0f, 0},   {1.0f, 0.9f, 0},
                                     {1.3f, 1.0f, 7}, {0.8f, 0.95f, 20}, {0.0f, 0.5f, 3},
                                     {1.0f, 1.0f, 1}, {2.0f, 1e-6f, 0}};
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<float> logits = RandomLogits(&gen, 1 + gen() % 300, 2.0f);
    if (trial % 4 == 0) {  // ties and specials
      for (float& x : logits) x = std::round(x);
      logits[gen() % logits.size()] = kNaN;
      logits[gen() % logits.size()] = -kInf;
    }
    for (const SamplingOptions& o : options) {
      Rng a(trial), b(trial);
      Sampler sampler;
      const int32_t with_rng = sampler.Sample(logits, o, &a);
      const bool draws = o.temperature > 0 && o.top_k != 1 && ArgmaxToken(logits) >= 0 &&
                         std::any_of(logits.begin(), logits.end(),
                                     [](float x) { return !std::isnan(x) && x > -kInf; });
      const double u = draws ? b.NextDouble() : 0.5;
      EXPECT_EQ(SampleTokenWithUniform(logits, o, u), with_rng) << "trial " << trial;
      EXPECT_EQ(sampler.SampleWithUniform(logits, o, u), with_rng) << "trial " << trial;
      // Both RNGs advanced alike: Sample draws exactly once when it samples, never otherwise.
      EXPECT_EQ(a.NextU64(), b.NextU64()) << "trial " << trial;
    }
  }
}

TEST(SampleTokenWithUniformTest, GreedyIgnoresTheUniform) {
  const std::vector<float> logits = {0.5f, 2.0f, kNaN, 2.0f, -1.0f};
  for (double u : {0.0, 0.3, 0.999999}) {
    EXPECT_EQ(SampleTokenWithUniform(logits, {0.0f, 1.0f, 0}, u), 1);
    EXPECT_EQ(SampleTokenWithUniform(logits, {1.5f, 0.9f, 1}, u), 1);
    EXPECT_EQ(SampleTokenWithUniform(std::vector<float>{-kInf, kNaN}, {1.0f, 0.5f, 4}, u), 0);
  }
  EXPECT_EQ(SampleTokenWithUniform(std::vector<float>{}, {1.0f, 1.0f, 0}, 0.5), -1);
}

// The draw inverts the CDF: sweeping u over a fine grid, each token takes a share of the grid
// equal to its probability (up to the grid step), and the chosen position never moves backwards
// (index order without top-k / top-p, sorted order with them).
TEST(SampleTokenWithUniformTest, InvertsTheCdfMonotonically) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.0f, 0.0f, kNaN, 1.5f};
  struct Case {
    SamplingOptions o;
    std::vector<bool> allowed;
    bool sorted;
  };
  // Sorted order: 1, 4 (tie, lower index first), 7, 0, 2, 5, 3.
  const std::vector<int32_t> rank = {3, 0, 4, 6, 1, 5, -1, 2};
  const Case cases[] = {
      {{1.0f, 1.0f, 0}, {true, true, true, true, true, true, false, true}, false},
      {{0.6f, 1.0f, 3}, {false, true, false, false, true, false, false, true}, true},
      {{1.0f, 0.6f, 0}, {false, true, false, false, true, false, false, true}, true},
  };
  const int grid = 100000;
  for (const Case& c : cases) {
    // Case 3: t=1 probabilities sorted 0.2956, 0.2956, 0.1793, ...: 0.5913 < 0.6 <= 0.7706.
    const std::vector<double> expected =
        Expected(std::vector<float>{1.0f, 2.0f, 0.5f, -1.0f, 2.0f, 0.0f, -1e30f, 1.5f},
                 c.o.temperature, c.allowed);
    std::vector<int> hits(logits.size(), 0);
    int32_t prev_pos = -1;
    for (int g = 0; g < grid; ++g) {
      const double u = (g + 0.5) / grid;
      const int32_t t = SampleTokenWithUniform(logits, c.o, u);
      ASSERT_GE(t, 0);
      ASSERT_TRUE(c.allowed[t]) << "token " << t << " u " << u;
      const int32_t pos = c.sorted ? rank[t] : t;
      ASSERT_GE(pos, prev_pos) << "u " << u;
      prev_pos = pos;
      ++hits[t];
    }
    for (size_t i = 0; i < logits.size(); ++i) {
      EXPECT_NEAR(hits[i] / static_cast<double>(grid), expected[i], 2.0 / grid) << "token " << i;
    }
  }
}

}  // namespace
}  // namespace kvc
