// SampleTokens (kernels/include/kvc/kernels/sampling.h) against the CPU reference
// SampleTokenWithUniform(row, options, CounterUniform(seed, counter)) on fresh random batches
// (vocabularies 1 .. 151936, rows 1 .. 256, every row its own options and special values); the
// frequencies of many draws against the softmax probabilities; argument validation; and a
// timing of 256 x 128256 rows (printed, not asserted).
//
// A GPU token may differ from the CPU's only where the CPU's own decision is within fp64 rounding
// of a boundary (u * total or top_p * total within 1e-9 relative of a cumulative mass): every
// other difference fails, and the near-boundary ones are counted and printed (expected 0).
#include "kernels/include/kvc/kernels/sampling.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvc::gpu_test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kNearBoundary = 1e-9;

struct Batch {
  int rows = 0;
  int vocab = 0;
  int64_t stride = 0;  // elements between rows (>= vocab)
  std::vector<float> logits;
  std::vector<float> temperature, top_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed, counter;

  void Resize(int r, int v, int64_t s) {
    rows = r;
    vocab = v;
    stride = s;
    logits.assign(static_cast<size_t>(r) * s, kNaN);
    temperature.assign(r, 1.0f);
    top_p.assign(r, 1.0f);
    top_k.assign(r, 0);
    seed.assign(r, 0);
    counter.assign(r, 0);
  }
  std::span<const float> Row(int r) const {
    return std::span<const float>(logits.data() + static_cast<size_t>(r) * stride, vocab);
  }
  float* MutableRow(int r) { return logits.data() + static_cast<size_t>(r) * stride; }
  SamplingOptions Options(int r) const { return {temperature[r], top_p[r], top_k[r]}; }
  int32_t Reference(int r) const {
    return SampleTokenWithUniform(Row(r), Options(r), CounterUniform(seed[r], counter[r]));
  }
};

// Runs SampleTokens on the batch; `with_options` false passes null option arrays.
std::vector<int32_t> RunGpu(const Batch& b, bool with_options = true) {
  DeviceBuffer<float> d_logits(b.logits), d_t(b.temperature), d_p(b.top_p);
  DeviceBuffer<int32_t> d_k(b.top_k), d_out(b.rows);
  DeviceBuffer<uint64_t> d_seed(b.seed), d_counter(b.counter);
  d_out.Poison();
  kernels::SampleTokensParams p;
  p.rows = b.rows;
  p.vocab = b.vocab;
  p.logits = d_logits.get();
  p.logits_stride = b.stride;
  if (with_options) {
    p.temperature = d_t.get();
    p.top_p = d_p.get();
    p.top_k = d_k.get();
    p.seed = d_seed.get();
    p.counter = d_counter.get();
  }
  p.out_tokens = d_out.get();
  const absl::Status st = kernels::SampleTokens(p, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return d_out.Download();
}

// The CPU rule's smallest distance between one of its threshold decisions (the top-p cut at
// top_p * total, the draw at u * total) and the nearest cumulative-mass boundary, relative to
// the total it is taken of. +inf when no such decision is made (greedy, nothing to sample).
double DecisionMargin(std::span<const float> logits, const SamplingOptions& o, double u) {
  constexpr double kNone = std::numeric_limits<double>::infinity();
  if (logits.empty() || !(o.temperature > 0) || o.top_k == 1) return kNone;
  auto clean = [](float x) { return std::isnan(x) ? -kInf : x; };
  float max_value = -kInf;
  for (float x : logits) max_value = std::max(max_value, clean(x));
  if (max_value == -kInf) return kNone;
  const bool inf_mode = std::isinf(max_value);
  const double inv_t = 1.0 / static_cast<double>(o.temperature);
  auto weight = [&](float x) -> double {
    if (inf_mode) return x == max_value ? 1.0 : 0.0;
    return std::exp((static_cast<double>(x) - max_value) * inv_t);
  };
  // (margin, position) of the first prefix whose mass crosses `target`.
  auto cross = [](const std::vector<double>& w, size_t n, double target, bool strict) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
      if (w[i] <= 0) continue;
      const double prev = cum;
      cum += w[i];
      if (strict ? cum > target : cum >= target) {
        return std::make_pair(std::min(target - prev, cum - target), i);
      }
    }
    return std::make_pair(0.0, n == 0 ? size_t{0} : n - 1);
  };
  std::vector<double> w;
  const bool use_k = o.top_k > 0, use_p = o.top_p < 1;
  if (!use_k && !use_p) {
    double total = 0;
    for (float x : logits) {
      w.push_back(clean(x) == -kInf ? 0.0 : weight(clean(x)));
      total += w.back();
    }
    return cross(w, w.size(), u * total, true).first / total;
  }
  std::vector<int32_t> order;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (clean(logits[i]) != -kInf) order.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return clean(logits[a]) > clean(logits[b]); });
  size_t keep = order.size();
  if (use_k) keep = std::min(keep, static_cast<size_t>(o.top_k));
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    w.push_back(weight(clean(logits[order[i]])));
    total += w.back();
  }
  double margin = kNone;
  if (use_p) {
    const auto [m, pos] = cross(w, keep, static_cast<double>(o.top_p) * total, false);
    margin = m / total;
    keep = pos + 1;
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += w[i];
  }
  return std::min(margin, cross(w, keep, u * total, true).first / total);
}

struct CompareStats {
  int exact = 0;
  int near = 0;  // differs, CPU decision within kNearBoundary of a boundary
  int bad = 0;
  std::string first_bad;
};

void Compare(const Batch& b, const std::vector<int32_t>& got, CompareStats* s,
             const std::string& what) {
  for (int r = 0; r < b.rows; ++r) {
    const int32_t ref = b.Reference(r);
    if (got[r] == ref) {
      ++s->exact;
      continue;
    }
    const SamplingOptions o = b.Options(r);
    const double margin = DecisionMargin(b.Row(r), o, CounterUniform(b.seed[r], b.counter[r]));
    if (margin < kNearBoundary) {
      ++s->near;
      std::printf("[sampling near-boundary] %s row %d: gpu %d cpu %d margin %.3g\n", what.c_str(),
                  r, got[r], ref, margin);
      continue;
    }
    if (++s->bad <= 5) {
      char buf[400];
      const float gx = got[r] >= 0 && got[r] < b.vocab ? b.Row(r)[got[r]] : kNaN;
      std::snprintf(buf, sizeof(buf),
                    "%s row %d vocab %d: gpu %d (logit %.9g) cpu %d (logit %.9g), t %.9g top_p "
                    "%.9g top_k %d u %.17g margin %.3g\n",
                    what.c_str(), r, b.vocab, got[r], gx, ref, b.Row(r)[ref], o.temperature,
                    o.top_p, o.top_k, CounterUniform(b.seed[r], b.counter[r]), margin);
      s->first_bad += buf;
    }
  }
}

enum class Dist {
  kNormal,
  kTies,
  kPeaked,
  kSpecials,
  kPosInf,
  kAllNegInf,
  kAllNaN,
  kAllEqual,
  kSingle,
  kZeros,
  kHuge,
  kCount
};

void FillRow(float* row, int vocab, Dist d, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto pick = [&] { return static_cast<int>(rng() % vocab); };
  switch (d) {
    case Dist::kNormal: {
      const float sigma = std::array<float, 3>{0.5f, 1.0f, 3.0f}[rng() % 3];
      for (int i = 0; i < vocab; ++i) row[i] = sigma * nd(rng);
      break;
    }
    case Dist::kTies:
      for (int i = 0; i < vocab; ++i) row[i] = std::round(2.0f * nd(rng) * 2.0f) / 2.0f;
      break;
    case Dist::kPeaked: {
      for (int i = 0; i < vocab; ++i) row[i] = 1.5f * nd(rng);
      const int peaks = 1 + static_cast<int>(rng() % 5);
      for (int k = 0; k < peaks; ++k) row[pick()] = 8.0f + 17.0f * (rng() % 1000) / 1000.0f;
      break;
    }
    case Dist::kSpecials:
      for (int i = 0; i < vocab; ++i) {
        const unsigned c = rng() % 20;
        row[i] = c == 0 ? kNaN : (c == 1 ? -kInf : 2.0f * nd(rng));
      }
      break;
    case Dist::kPosInf: {
      for (int i = 0; i < vocab; ++i) row[i] = rng() % 10 == 0 ? kNaN : 2.0f * nd(rng);
      const int infs = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < infs; ++k) row[pick()] = kInf;
      break;
    }
    case Dist::kAllNegInf:
      for (int i = 0; i < vocab; ++i) row[i] = -kInf;
      break;
    case Dist::kAllNaN:
      for (int i = 0; i < vocab; ++i) row[i] = rng() % 2 ? kNaN : -kInf;
      break;
    case Dist::kAllEqual: {
      const float c = nd(rng);
      for (int i = 0; i < vocab; ++i) row[i] = c;
      break;
    }
    case Dist::kSingle: {
      for (int i = 0; i < vocab; ++i) row[i] = rng() % 2 ? kNaN : -kInf;
      row[pick()] = nd(rng);
      if (rng() % 2) row[pick()] = nd(rng);
      break;
    }
    case Dist::kZeros: {
      const float vals[] = {-0.0f, 0.0f, -1.0f, 1.0f, 0.5f, -0.0f, 0.0f};
      for (int i = 0; i < vocab; ++i) row[i] = vals[rng() % 7];
      break;
    }
    case Dist::kHuge:
      for (int i = 0; i < vocab; ++i) {
        row[i] = (static_cast<float>(rng() % 2000001) / 1e6f - 1.0f) * 3e38f;
      }
      break;
    case Dist::kCount:
      break;
  }
}

Dist RandomDist(std::mt19937& rng) {
  // Mostly realistic rows; every special kind shows up in every large batch.
  const unsigned c = rng() % 40;
  if (c < 12) return Dist::kNormal;
  if (c < 18) return Dist::kPeaked;
  if (c < 23) return Dist::kTies;
  return static_cast<Dist>(3 + (c - 23) % (static_cast<int>(Dist::kCount) - 3));
}

SamplingOptions RandomOptions(std::mt19937& rng, int vocab) {
  auto one_of = [&](auto... v) {
    const std::array<std::common_type_t<decltype(v)...>, sizeof...(v)> a{v...};
    return a[rng() % a.size()];
  };
  auto temp = [&] { return one_of(0.05f, 0.3f, 0.7f, 1.0f, 1.5f, 4.0f); };
  auto topk = [&] {
    const int32_t k =
        one_of(2, 3, 5, 20, 50, 1000, 4095, 4096, 4097, 10000, vocab - 1, vocab, vocab + 7);
    return std::max<int32_t>(k, 2);
  };
  auto topp = [&] { return one_of(1e-6f, 0.05f, 0.3f, 0.5f, 0.8f, 0.9f, 0.95f, 0.99f, 0.999f); };
  switch (rng() % 12) {
    case 0:
      return {0.0f, 1.0f, 0};
    case 1:
      return {temp(), topp(), 1};
    case 2:
    case 3:
      return {temp(), 1.0f, 0};
    case 4:
    case 5:
      return {temp(), 1.0f, topk()};
    case 6:
    case 7:
      return {temp(), topp(), 0};
    case 8:
    case 9:
      return {temp(), topp(), topk()};
    case 10:
      return {one_of(1e-3f, 0.01f), topp(), rng() % 2 ? topk() : 0};
    default:
      // Values the host validation rejects: the kernel still follows the CPU rule.
      return {one_of(-1.0f, kNaN, 1.0f, 2.0f), one_of(1.5f, kNaN, 0.7f), one_of(-3, 0, 7)};
  }
}

void FillBatch(Batch* b, int rows, int vocab, int64_t stride, std::mt19937& rng) {
  b->Resize(rows, vocab, stride);
  for (int r = 0; r < rows; ++r) {
    FillRow(b->MutableRow(r), vocab, RandomDist(rng), rng);
    const SamplingOptions o = RandomOptions(rng, vocab);
    b->temperature[r] = o.temperature;
    b->top_p[r] = o.top_p;
    b->top_k[r] = o.top_k;
    b->seed[r] = (static_cast<uint64_t>(rng()) << 32) | rng();
    b->counter[r] = rng() % 3 == 0 ? rng() % 16 : (static_cast<uint64_t>(rng()) << 20) | rng();
    if (rng() % 16 == 0) {
      // A draw at either end of [0, 1) (within 1e-5): the first and the last tokens of the CDF.
      const bool high = rng() % 2;
      while (true) {
        const double u = CounterUniform(b->seed[r], b->counter[r]);
        if (high ? u > 1 - 1e-5 : u < 1e-5) break;
        ++b->counter[r];
      }
    }
  }
}

TEST(SampleTokensTest, MatchesCpuReferenceOnMixedBatches) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  struct Shape {
    int vocab, rows;
    int64_t pad;
  };
  std::vector<Shape> shapes = {{1, 37, 0},      {2, 64, 3},       {3, 200, 0},    {7, 256, 1},
                               {100, 256, 0},   {1000, 199, 0},   {4097, 128, 5}, {32000, 96, 0},
                               {50257, 64, 11}, {128256, 256, 0}, {151936, 48, 0}};
  if (SmallCases()) shapes = {{1, 5, 0}, {7, 9, 1}, {100, 16, 0}, {4097, 6, 3}, {20000, 4, 0}};
  CompareStats total;
  for (int round = 0; round < (SmallCases() ? 1 : 2); ++round) {
    for (const Shape& s : shapes) {
      Batch b;
      const int rows = round == 0 ? s.rows : 1 + static_cast<int>(rng() % s.rows);
      FillBatch(&b, rows, s.vocab, s.vocab + s.pad, rng);
      const std::vector<int32_t> got = RunGpu(b);
      for (int r = 0; r < b.rows; ++r) {
        ASSERT_GE(got[r], 0) << "row " << r << " vocab " << s.vocab;
        ASSERT_LT(got[r], s.vocab) << "row " << r;
      }
      CompareStats st;
      Compare(b, got, &st, "vocab " + std::to_string(s.vocab));
      std::printf("[sampling vocab %6d rows %3d] exact %d near-boundary %d wrong %d\n", s.vocab,
                  b.rows, st.exact, st.near, st.bad);
      EXPECT_EQ(st.bad, 0) << st.first_bad;
      total.exact += st.exact;
      total.near += st.near;
      total.bad += st.bad;
    }
  }
  std::printf("[sampling total] exact %d near-boundary %d wrong %d\n", total.exact, total.near,
              total.bad);
  EXPECT_LE(total.near, 2) << "near-boundary mismatches should be ~0 with fp64 weights";
}

TEST(SampleTokensTest, NullOptionArraysMeanGreedyOrDefaults) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  Batch b;
  FillBatch(&b, SmallCases() ? 8 : 100, 5003, 5003, rng);
  const std::vector<int32_t> greedy = RunGpu(b, /*with_options=*/false);
  for (int r = 0; r < b.rows; ++r) EXPECT_EQ(greedy[r], ArgmaxToken(b.Row(r))) << "row " << r;

  // Only temperature given: top_p = 1, top_k = 0, seed = counter = 0.
  DeviceBuffer<float> d_logits(b.logits), d_t(std::vector<float>(b.rows, 0.9f));
  DeviceBuffer<int32_t> d_out(b.rows);
  d_out.Poison();
  kernels::SampleTokensParams p;
  p.rows = b.rows;
  p.vocab = b.vocab;
  p.logits = d_logits.get();
  p.temperature = d_t.get();
  p.out_tokens = d_out.get();
  ASSERT_TRUE(kernels::SampleTokens(p, nullptr).ok());
  const std::vector<int32_t> got = d_out.Download();
  for (int r = 0; r < b.rows; ++r) {
    EXPECT_EQ(got[r], SampleTokenWithUniform(b.Row(r), {0.9f, 1.0f, 0}, CounterUniform(0, 0)))
        << "row " << r;
  }
}

// Wilson-Hilferty approximation of the chi-square quantile at p = 1e-6 (z = 4.753).
double Chi2Critical(int df) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + 4.753 * std::sqrt(a), 3.0);
}

// Probabilities of the CPU rule (independent of it): softmax over the kept prefix of the sorted
// order after top-k and top-p.
std::vector<double> RuleProbabilities(const std::vector<float>& logits, const SamplingOptions& o) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  size_t keep = o.top_k > 0 ? std::min(order.size(), static_cast<size_t>(o.top_k)) : order.size();
  std::vector<double> w(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    total += w[i] = std::exp((logits[order[i]] - logits[order[0]]) / o.temperature);
  }
  if (o.top_p < 1) {
    double cum = 0;
    size_t prefix = 0;
    while (prefix < keep && cum < o.top_p * total) cum += w[prefix++];
    keep = prefix;
    total = cum;
  }
  std::vector<double> p(logits.size(), 0.0);
  for (size_t i = 0; i < keep; ++i) p[order[i]] = w[i] / total;
  return p;
}

double ChiSquare(const std::vector<int64_t>& counts, const std::vector<double>& p, int64_t draws,
                 int* df) {
  double chi2 = 0;
  *df = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) continue;
    ++*df;
    const double e = p[i] * draws;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

TEST(SampleTokensTest, FrequenciesMatchTheRuleProbabilities) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int vocab = 40;
  const int draws = SmallCases() ? 3000 : 60000;
  std::vector<float> logits(vocab);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  for (float& x : logits) x = nd(rng);
  const uint64_t stream_seed = (static_cast<uint64_t>(rng()) << 32) | rng();
  const SamplingOptions configs[] = {
      {0.8f, 1.0f, 0}, {1.0f, 1.0f, 10}, {0.7f, 0.8f, 0}, {1.2f, 0.9f, 20}};
  for (const SamplingOptions& o : configs) {
    SCOPED_TRACE("t " + std::to_string(o.temperature) + " top_p " + std::to_string(o.top_p) +
                 " top_k " + std::to_string(o.top_k));
    // One row per draw: the same logits, counters 0 .. draws-1 of one seed.
    Batch b;
    b.Resize(draws, vocab, vocab);
    for (int r = 0; r < draws; ++r) {
      std::copy(logits.begin(), logits.end(), b.MutableRow(r));
      b.temperature[r] = o.temperature;
      b.top_p[r] = o.top_p;
      b.top_k[r] = o.top_k;
      b.seed[r] = stream_seed;
      b.counter[r] = static_cast<uint64_t>(r);
    }
    const std::vector<int32_t> got = RunGpu(b);
    const std::vector<double> p = RuleProbabilities(logits, o);
    std::vector<int64_t> counts(vocab, 0);
    int same = 0;
    for (int r = 0; r < draws; ++r) {
      ASSERT_GE(got[r], 0);
      ASSERT_LT(got[r], vocab);
      ASSERT_GT(p[got[r]], 0.0) << "token " << got[r] << " is outside the kept set";
      ++counts[got[r]];
      same += got[r] == b.Reference(r);
    }
    EXPECT_EQ(same, draws) << "every draw equals the CPU reference's";
    int df = 0;
    const double chi2 = ChiSquare(counts, p, draws, &df);
    std::printf(
        "[sampling distribution] t %.2f top_p %.2f top_k %d: chi2 %.1f df %d (limit %.1f)\n",
        o.temperature, o.top_p, o.top_k, chi2, df, Chi2Critical(std::max(df, 1)));
    if (df > 0) {
      EXPECT_LT(chi2, Chi2Critical(df));
    }
    if (o.top_k == 0 && o.top_p >= 1 && !SmallCases()) {
      // Power: the same draws are far from the distribution of twice the temperature.
      const std::vector<double> wrong = RuleProbabilities(logits, {2 * o.temperature, 1.0f, 0});
      int wdf = 0;
      const double wrong_chi2 = ChiSquare(counts, wrong, draws, &wdf);
      std::printf(
          "[sampling distribution] same draws against t %.2f: chi2 %.1f (must exceed %.1f)\n",
          2 * o.temperature, wrong_chi2, 10 * Chi2Critical(wdf));
      EXPECT_GT(wrong_chi2, 10 * Chi2Critical(wdf));
    }
  }
}

TEST(SampleTokensTest, ValidationNamesTheField) {
  float dummy_f = 0;
  int32_t dummy_i = 0;
  kernels::SampleTokensParams ok;
  ok.rows = 1;
  ok.vocab = 10;
  ok.logits = &dummy_f;  // never launched: every case below fails validation
  ok.out_tokens = &dummy_i;
  auto message = [](const kernels::SampleTokensParams& p) {
    const absl::Status st = kernels::SampleTokens(p, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    return std::string(st.message());
  };
  kernels::SampleTokensParams p = ok;
  p.rows = -1;
  EXPECT_NE(message(p).find("rows"), std::string::npos);
  p = ok;
  p.vocab = 0;
  EXPECT_NE(message(p).find("vocab"), std::string::npos);
  p.vocab = kernels::kSampleTokensMaxVocab + 1;
  EXPECT_NE(message(p).find("vocab"), std::string::npos);
  p = ok;
  p.logits = nullptr;
  EXPECT_NE(message(p).find("logits"), std::string::npos);
  p = ok;
  p.out_tokens = nullptr;
  EXPECT_NE(message(p).find("out_tokens"), std::string::npos);
  p = ok;
  p.logits_stride = 9;
  EXPECT_NE(message(p).find("logits_stride"), std::string::npos);
  p = ok;
  p.rows = 0;
  p.logits = nullptr;
  EXPECT_TRUE(kernels::SampleTokens(p, nullptr).ok()) << "rows == 0 is a no-op";
  EXPECT_GE(kernels::SampleTokensWorkspaceBytes(256, 128256), 0);
}

// Not an assertion on speed: prints the time of one SampleTokens call for a full decode batch.
TEST(SampleTokensTest, Timing) {
  const uint32_t seed = TestSeed();
  std::mt19937 rng(seed);
  const int rows = SmallCases() ? 4 : 256;
  const int vocab = SmallCases() ? 4096 : 128256;
  // LLM-like rows: a broad body and a few strong candidates.
  Batch b;
  b.Resize(rows, vocab, vocab);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int r = 0; r < rows; ++r) {
    float* row = b.MutableRow(r);
    for (int i = 0; i < vocab; ++i) row[i] = nd(rng);
    for (int k = 0; k < 8; ++k) row[rng() % vocab] = 10.0f + (rng() % 100) / 10.0f;
    b.seed[r] = rng();
    b.counter[r] = rng();
  }
  DeviceBuffer<float> d_logits(b.logits);
  DeviceBuffer<int32_t> d_out(rows);
  struct Config {
    const char* name;
    float t, p;
    int32_t k;
    bool null_options;
  };
  const Config configs[] = {{"greedy", 0.0f, 1.0f, 0, true},
                            {"temperature 0.8", 0.8f, 1.0f, 0, false},
                            {"top-k 50", 0.8f, 1.0f, 50, false},
                            {"top-p 0.9", 0.8f, 0.9f, 0, false},
                            {"top-p 0.95 flat (t 1.5)", 1.5f, 0.95f, 0, false},
                            {"top-k 50 + top-p 0.9", 0.8f, 0.9f, 50, false}};
  cudaEvent_t start, stop;
  KVC_CUDA_CHECK(cudaEventCreate(&start));
  KVC_CUDA_CHECK(cudaEventCreate(&stop));
  for (const Config& c : configs) {
    for (int r = 0; r < rows; ++r) {
      b.temperature[r] = c.t;
      b.top_p[r] = c.p;
      b.top_k[r] = c.k;
    }
    DeviceBuffer<float> d_t(b.temperature), d_p(b.top_p);
    DeviceBuffer<int32_t> d_k(b.top_k);
    DeviceBuffer<uint64_t> d_seed(b.seed), d_counter(b.counter);
    kernels::SampleTokensParams p;
    p.rows = rows;
    p.vocab = vocab;
    p.logits = d_logits.get();
    if (!c.null_options) {
      p.temperature = d_t.get();
      p.top_p = d_p.get();
      p.top_k = d_k.get();
      p.seed = d_seed.get();
      p.counter = d_counter.get();
    }
    p.out_tokens = d_out.get();
    auto time_us = [&](int n) {
      p.rows = n;
      for (int i = 0; i < 3; ++i) EXPECT_TRUE(kernels::SampleTokens(p, nullptr).ok());
      const int iters = 20;
      KVC_CUDA_CHECK(cudaEventRecord(start));
      for (int i = 0; i < iters; ++i) EXPECT_TRUE(kernels::SampleTokens(p, nullptr).ok());
      KVC_CUDA_CHECK(cudaEventRecord(stop));
      KVC_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      KVC_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      return 1000.0 * ms / iters;
    };
    const double us = time_us(rows);
    const double gbs = static_cast<double>(rows) * vocab * sizeof(float) / (us * 1e3);
    // The timed launches sampled these rows: they must still be the reference's tokens.
    const std::vector<int32_t> got = d_out.Download();
    CompareStats st;
    Compare(b, got, &st, c.name);
    std::printf(
        "[sampling timing] %d x %d %-26s %9.1f us/call (%6.0f GB/s of logits)  exact %d "
        "near %d wrong %d\n",
        rows, vocab, c.name, us, gbs, st.exact, st.near, st.bad);
    EXPECT_EQ(st.bad, 0) << st.first_bad;
    // Smaller batches (the same leading rows: the same tokens).
    for (int n : {32, 1}) {
      if (n >= rows) continue;
      const double small_us = time_us(n);
      const std::vector<int32_t> sub = d_out.Download();
      for (int r = 0; r < n; ++r) EXPECT_EQ(sub[r], got[r]) << c.name << " row " << r;
      std::printf("[sampling timing] %d x %d %-26s %9.1f us/call\n", n, vocab, c.name, small_us);
    }
  }
  KVC_CUDA_CHECK(cudaEventDestroy(start));
  KVC_CUDA_CHECK(cudaEventDestroy(stop));
}

}  // namespace
}  // namespace kvc::gpu_test
