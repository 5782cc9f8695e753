// Private helpers of the CPU kernels (not a public API): an 8-lane float vector built on the
// GCC/Clang vector extension, and the function-multiversioning attribute.
//
// Hot loops live in functions marked KVC_CPU_MULTIVERSION; on x86-64 with GCC the compiler emits
// an x86-64-v3 (AVX2 + FMA) clone and a baseline clone and picks one at load time (ifunc). The
// helpers below are always inlined, so they are compiled for the clone that calls them. Summation
// order is fixed by the code (8 lanes, then HSum), so results are deterministic on one machine.
#ifndef KVC_KERNELS_CPU_SIMD_H_
#define KVC_KERNELS_CPU_SIMD_H_

#include <cstdint>
#include <cstring>

// Not under ThreadSanitizer: its runtime is not up when ifunc resolvers run (they crash).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define KVC_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define KVC_CPU_MULTIVERSION
#endif

#define KVC_CPU_INLINE __attribute__((always_inline)) inline
#define KVC_CPU_UNROLL _Pragma("GCC unroll 8")

namespace kvc::cpu::simd {

typedef float V8 __attribute__((vector_size(32)));

KVC_CPU_INLINE V8 Load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
KVC_CPU_INLINE void Store(float* p, V8 v) { std::memcpy(p, &v, sizeof(v)); }
KVC_CPU_INLINE V8 Splat(float f) { return V8{f, f, f, f, f, f, f, f}; }
KVC_CPU_INLINE V8 Zero() { return V8{0, 0, 0, 0, 0, 0, 0, 0}; }

// Fixed-order horizontal sum.
KVC_CPU_INLINE float HSum(V8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// sum_i a[i] * b[i]: 8 lanes over the first n & ~7 elements, HSum, then the tail in order.
KVC_CPU_INLINE float Dot(const float* a, const float* b, int32_t n) {
  const int32_t n8 = n & ~7;
  V8 acc0 = Zero(), acc1 = Zero();
  int32_t k = 0;
  for (; k + 16 <= n8; k += 16) {
    acc0 += Load(a + k) * Load(b + k);
    acc1 += Load(a + k + 8) * Load(b + k + 8);
  }
  for (; k < n8; k += 8) acc0 += Load(a + k) * Load(b + k);
  float s = HSum(acc0 + acc1);
  for (k = n8; k < n; ++k) s += a[k] * b[k];
  return s;
}

// y[i] += a * x[i].
KVC_CPU_INLINE void Axpy(float* y, float a, const float* x, int32_t n) {
  const int32_t n8 = n & ~7;
  const V8 av = Splat(a);
  int32_t k = 0;
  for (; k < n8; k += 8) Store(y + k, Load(y + k) + av * Load(x + k));
  for (; k < n; ++k) y[k] += a * x[k];
}

}  // namespace kvc::cpu::simd

#endif  // KVC_KERNELS_CPU_SIMD_H_
