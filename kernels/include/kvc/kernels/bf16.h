// Bf16: the storage type of bfloat16 tensors in the host-only kernel API (no CUDA types).
//
// A Bf16 is the 16 raw bits of an IEEE bfloat16 (the top half of an fp32). Device code
// reinterprets Bf16 buffers as __nv_bfloat16; host code converts with the helpers below.
// Conversions round to nearest even, like __float2bfloat16_rn and torch's .to(bfloat16);
// NaN stays NaN. Header-only, constexpr-free plain functions; safe from any thread. nvcc may
// include this header (it has no Abseil).
#ifndef KVC_KERNELS_BF16_H_
#define KVC_KERNELS_BF16_H_

#include <cstdint>
#include <cstring>

namespace kvc::kernels {

struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Bf16) == 2, "Bf16 must be 2 bytes");

// fp32 -> bf16, round to nearest even (NaN -> quiet NaN).
inline Bf16 FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

// bf16 -> fp32 (exact).
inline float Bf16ToFloat(Bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// fp32 rounded through bf16 (what a value becomes once stored as bf16).
inline float RoundToBf16(float f) { return Bf16ToFloat(FloatToBf16(f)); }

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_BF16_H_
