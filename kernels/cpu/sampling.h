// CPU token sampling: temperature, top-k, top-p (nucleus) and greedy decoding over one row of
// logits, driven by a small deterministic per-request RNG. It is the reference the CUDA sampling
// kernel is compared against, and what the CPU executor's engine uses.
//
// Contract of SampleToken (for one row `logits` of a vocabulary of V tokens):
//   * NaN logits are treated as -inf (never sampled unless every logit is NaN or -inf).
//   * temperature <= 0 (or NaN), or top_k == 1: greedy, the index of the largest logit, the
//     LOWEST index on ties. If no logit is above -inf (all NaN / -inf) the result is 0.
//   * Otherwise p_i ∝ exp((x_i - max) / temperature) over tokens with x_i > -inf (when some
//     logits are +inf, exactly those share the mass uniformly). Then top-k keeps the k largest
//     logits (ties: lower index first; 0 = off), then top-p keeps the smallest prefix of that
//     order whose renormalised mass is >= top_p (always >= 1 token; top_p >= 1 = off), and one
//     token is drawn from what is left with one Rng::NextDouble() call (none is made on the
//     greedy paths).
//   * Empty logits return -1.
// SampleTokenWithUniform applies the same rule with the uniform given instead of drawn: the
// form the executors use with CounterUniform(seed, counter), and the exact rule the CUDA kernel
// (kernels/include/kvc/kernels/sampling.h) follows.
// Identical (logits, options, RNG state) give identical tokens on every platform that has IEEE
// float and the same libm exp().
//
// Thread-safety: Rng and Sampler are not thread-safe (one per request / per engine thread);
// SampleToken is reentrant.
#ifndef KVC_KERNELS_CPU_SAMPLING_H_
#define KVC_KERNELS_CPU_SAMPLING_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace kvc {

struct SamplingOptions {
  float temperature = 1.0f;  // >= 0; 0 = greedy
  float top_p = 1.0f;        // (0, 1]; 1 = off
  int32_t top_k = 0;         // >= 0; 0 = off, 1 = greedy
};

// INVALID_ARGUMENT naming the field: temperature must be finite and >= 0, top_p in (0, 1],
// top_k >= 0.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

// xoshiro256** seeded through splitmix64: fast, 256-bit state, reproducible from a uint64 seed.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t NextU64();
  // Uniform in [0, 1) with 53 random bits.
  double NextDouble();

 private:
  uint64_t s_[4];
};

// Uniform in [0, 1) with 53 bits from a counter-based hash of (seed, counter): the draw of a
// request's counter-th token. Identical on host and device (kernels::SamplingCounterUniform in
// kernels/include/kvc/kernels/sampling_params.h).
double CounterUniform(uint64_t seed, uint64_t counter);

// Holds scratch buffers so repeated calls do not allocate once they reached vocabulary size.
class Sampler {
 public:
  // Draws rng->NextDouble() only when the row is really sampled (not greedy, some logit above
  // -inf), so the RNG stream is the same as before SampleWithUniform existed.
  int32_t Sample(std::span<const float> logits, const SamplingOptions& options, Rng* rng);
  // The same rule with the uniform `u` in [0, 1) given.
  int32_t SampleWithUniform(std::span<const float> logits, const SamplingOptions& options,
                            double u);

 private:
  template <typename UniformFn>
  int32_t SampleImpl(std::span<const float> logits, const SamplingOptions& options,
                     UniformFn uniform);

  std::vector<int32_t> order_;
  std::vector<double> weights_;
};

// One-shot form of Sampler::Sample (allocates its scratch).
int32_t SampleToken(std::span<const float> logits, const SamplingOptions& options, Rng* rng);

// One-shot form of Sampler::SampleWithUniform: SampleToken's rule with the uniform u in [0, 1)
// given (u is only used where SampleToken would call Rng::NextDouble()).
int32_t SampleTokenWithUniform(std::span<const float> logits, const SamplingOptions& options,
                               double u);

// Greedy choice alone: largest logit, lowest index on ties, NaN as -inf; 0 if none is above -inf;
// -1 if empty.
int32_t ArgmaxToken(std::span<const float> logits);

}  // namespace kvc

#endif  // KVC_KERNELS_CPU_SAMPLING_H_
