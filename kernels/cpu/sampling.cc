#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/include/kvc/kernels/sampling_params.h"

namespace kvc {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float Clean(float x) { return std::isnan(x) ? kNegInf : x; }

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

absl::Status ValidateSamplingOptions(const SamplingOptions& options) {
  if (!std::isfinite(options.temperature) || options.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite and >= 0, got ", options.temperature));
  }
  if (!(options.top_p > 0 && options.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", options.top_p));
  }
  if (options.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", options.top_k));
  }
  return absl::OkStatus();
}

Rng::Rng(uint64_t seed) {
  uint64_t state = seed;
  for (uint64_t& word : s_) word = SplitMix64(&state);
}

uint64_t Rng::NextU64() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Rng::NextDouble() { return static_cast<double>(NextU64() >> 11) * 0x1.0p-53; }

int32_t ArgmaxToken(std::span<const float> logits) {
  if (logits.empty()) return -1;
  int32_t best = 0;
  float best_value = Clean(logits[0]);
  for (size_t i = 1; i < logits.size(); ++i) {
    const float x = Clean(logits[i]);
    if (x > best_value) {
      best_value = x;
      best = static_cast<int32_t>(i);
    }
  }
  return best;
}

double CounterUniform(uint64_t seed, uint64_t counter) {
  return kernels::SamplingCounterUniform(seed, counter);
}

template <typename UniformFn>
int32_t Sampler::SampleImpl(std::span<const float> logits, const SamplingOptions& options,
                            UniformFn uniform) {
  if (logits.empty()) return -1;
  // `!(t > 0)` also sends a NaN temperature to greedy.
  if (!(options.temperature > 0) || options.top_k == 1) return ArgmaxToken(logits);

  float max_value = kNegInf;
  for (const float x : logits) max_value = std::max(max_value, Clean(x));
  if (max_value == kNegInf) return 0;  // nothing can be sampled: the greedy rule's answer
  const bool max_is_inf = std::isinf(max_value);
  const double inv_t = 1.0 / static_cast<double>(options.temperature);
  auto weight = [&](float x) -> double {
    if (max_is_inf) return x == max_value ? 1.0 : 0.0;
    return std::exp((static_cast<double>(x) - max_value) * inv_t);
  };

  const int32_t vocab = static_cast<int32_t>(logits.size());
  const bool use_top_k = options.top_k > 0;
  const bool use_top_p = options.top_p < 1;

  if (!use_top_k && !use_top_p) {
    // Plain softmax sampling in index order: no sort needed.
    weights_.resize(logits.size());
    double total = 0;
    for (int32_t i = 0; i < vocab; ++i) {
      const float x = Clean(logits[i]);
      weights_[i] = x == kNegInf ? 0.0 : weight(x);
      total += weights_[i];
    }
    const double target = uniform() * total;
    double cum = 0;
    int32_t last_positive = 0;
    for (int32_t i = 0; i < vocab; ++i) {
      if (weights_[i] <= 0) continue;
      cum += weights_[i];
      last_positive = i;
      if (cum > target) return i;
    }
    return last_positive;  // rounding left target at the very top of the range
  }

  // Candidates (logit above -inf) in order of (logit descending, index ascending).
  order_.clear();
  for (int32_t i = 0; i < vocab; ++i) {
    if (Clean(logits[i]) != kNegInf) order_.push_back(i);
  }
  auto before = [&](int32_t a, int32_t b) {
    const float xa = Clean(logits[a]);
    const float xb = Clean(logits[b]);
    return xa != xb ? xa > xb : a < b;
  };
  size_t keep = order_.size();
  if (use_top_k && static_cast<size_t>(options.top_k) < keep) {
    keep = static_cast<size_t>(options.top_k);
    std::nth_element(order_.begin(), order_.begin() + (keep - 1), order_.end(), before);
    std::sort(order_.begin(), order_.begin() + keep, before);
  } else {
    std::sort(order_.begin(), order_.end(), before);
  }
  weights_.resize(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    weights_[i] = weight(Clean(logits[order_[i]]));
    total += weights_[i];
  }
  if (use_top_p) {
    const double needed = static_cast<double>(options.top_p) * total;
    double cum = 0;
    size_t prefix = 0;
    while (prefix < keep) {
      cum += weights_[prefix++];
      if (cum >= needed) break;
    }
    keep = std::max<size_t>(prefix, 1);
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += weights_[i];
  }
  const double target = uniform() * total;
  double cum = 0;
  size_t last_positive = 0;
  for (size_t i = 0; i < keep; ++i) {
    if (weights_[i] <= 0) continue;
    cum += weights_[i];
    last_positive = i;
    if (cum > target) return order_[i];
  }
  return order_[last_positive];
}

int32_t Sampler::Sample(std::span<const float> logits, const SamplingOptions& options, Rng* rng) {
  return SampleImpl(logits, options, [rng] { return rng->NextDouble(); });
}

int32_t Sampler::SampleWithUniform(std::span<const float> logits, const SamplingOptions& options,
                                   double u) {
  return SampleImpl(logits, options, [u] { return u; });
}

int32_t SampleToken(std::span<const float> logits, const SamplingOptions& options, Rng* rng) {
  Sampler sampler;
  return sampler.Sample(logits, options, rng);
}

int32_t SampleTokenWithUniform(std::span<const float> logits, const SamplingOptions& options,
                               double u) {
  Sampler sampler;
  return sampler.SampleWithUniform(logits, options, u);
}

}  // namespace kvc
