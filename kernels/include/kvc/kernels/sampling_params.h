// Parameters of the CUDA token-sampling kernel (entry point in sampling.h) and the counter-based
// uniform draw that the kernel and the CPU reference (kernels/cpu/sampling.h, CounterUniform)
// share. POD only: nvcc includes this header (no Abseil, no CUDA types).
//
// Ownership: every pointer is a caller-owned DEVICE pointer; the kernel only touches it during
// the launch on the given stream.
//
// Thread-safety: plain data and pure functions.
#ifndef KVC_KERNELS_SAMPLING_PARAMS_H_
#define KVC_KERNELS_SAMPLING_PARAMS_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KVC_SAMPLING_HD __host__ __device__
#else
#define KVC_SAMPLING_HD
#endif

namespace kvc::kernels {

// Largest vocabulary SampleTokens accepts (its index-order pass keeps one fp64 per 512 tokens in
// shared memory).
inline constexpr int32_t kSampleTokensMaxVocab = 1 << 21;

// One next token per row of logits, with exactly the rule of the CPU reference
// SampleTokenWithUniform(row, {temperature, top_p, top_k}, SamplingCounterUniform(seed, counter))
// (kernels/cpu/sampling.h): greedy when !(temperature > 0) or top_k == 1 (largest logit, lowest
// index on ties, NaN as -inf, 0 when every logit is NaN / -inf); otherwise temperature softmax,
// top-k (0 = off), top-p (>= 1 or NaN = off), one draw. The options are NOT validated by the
// kernel (do that on the host with ValidateSamplingOptions); out-of-range values behave as in
// the CPU reference.
struct SampleTokensParams {
  int32_t rows = 0;                    // >= 0; one thread block per row
  int32_t vocab = 0;                   // in [1, kSampleTokensMaxVocab]
  const float* logits = nullptr;       // [rows, vocab] fp32, row r at logits + r * logits_stride
  int64_t logits_stride = 0;           // elements between rows; 0 = vocab
  const float* temperature = nullptr;  // [rows]; nullptr = every row greedy
  const float* top_p = nullptr;        // [rows]; nullptr = 1 (off)
  const int32_t* top_k = nullptr;      // [rows]; nullptr = 0 (off)
  const uint64_t* seed = nullptr;      // [rows]; nullptr = 0
  const uint64_t* counter = nullptr;   // [rows]; nullptr = 0
  int32_t* out_tokens = nullptr;       // [rows] sampled token ids
  // Scratch of at least SampleTokensWorkspaceBytes(rows, vocab) bytes (nullptr when that is 0),
  // 256-byte aligned. Not read between launches.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// splitmix64's finaliser.
KVC_SAMPLING_HD inline uint64_t SamplingMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 64 random bits from (seed, counter): two splitmix64 rounds, the counter entering after the
// seed was mixed, so neighbouring seeds and neighbouring counters give unrelated values.
KVC_SAMPLING_HD inline uint64_t SamplingCounterHash(uint64_t seed, uint64_t counter) {
  const uint64_t s = SamplingMix64(seed + 0x9E3779B97F4A7C15ull);
  return SamplingMix64(s ^ (counter * 0xD1B54A32D192ED03ull + 0x9E3779B97F4A7C15ull));
}

// Uniform in [0, 1) with 53 random bits (exact in double on host and device).
KVC_SAMPLING_HD inline double SamplingCounterUniform(uint64_t seed, uint64_t counter) {
  return static_cast<double>(SamplingCounterHash(seed, counter) >> 11) * 0x1.0p-53;
}

}  // namespace kvc::kernels

#undef KVC_SAMPLING_HD

#endif  // KVC_KERNELS_SAMPLING_PARAMS_H_
