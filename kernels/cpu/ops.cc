#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc::cpu {

namespace simd_impl {

using simd::V8;

// One R x C tile of y = x W^T: R rows of x against C rows of W.
template <int R, int C>
KVC_CPU_INLINE void MatmulTile(const float* x, int64_t xs, const float* w, int32_t k_total,
                               const float* bias, float* y, int64_t ys, bool accumulate) {
  const int32_t k8 = k_total & ~7;
  V8 acc[R][C];
  KVC_CPU_UNROLL for (int r = 0; r < R; ++r) {
    KVC_CPU_UNROLL for (int c = 0; c < C; ++c) acc[r][c] = simd::Zero();
  }
  for (int32_t k = 0; k < k8; k += 8) {
    V8 xv[R];
    KVC_CPU_UNROLL for (int r = 0; r < R; ++r) xv[r] = simd::Load(x + r * xs + k);
    KVC_CPU_UNROLL for (int c = 0; c < C; ++c) {
      const V8 wv = simd::Load(w + static_cast<int64_t>(c) * k_total + k);
      KVC_CPU_UNROLL for (int r = 0; r < R; ++r) acc[r][c] += xv[r] * wv;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = simd::HSum(acc[r][c]);
      const float* xr = x + r * xs;
      const float* wc = w + static_cast<int64_t>(c) * k_total;
      for (int32_t k = k8; k < k_total; ++k) s += xr[k] * wc[k];
      if (bias != nullptr) s += bias[c];
      float* out = y + r * ys + c;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <int R>
KVC_CPU_INLINE void MatmulRowTile(const MatmulParams& p, int64_t xs, int64_t ys, int32_t r,
                                  int32_t o_begin, int32_t o_end) {
  const float* x = p.x + r * xs;
  float* y = p.y + r * ys;
  int32_t o = o_begin;
  for (; o + 2 <= o_end; o += 2) {
    MatmulTile<R, 2>(x, xs, p.w + static_cast<int64_t>(o) * p.in, p.in,
                     p.bias ? p.bias + o : nullptr, y + o, ys, p.accumulate);
  }
  if (o < o_end) {
    MatmulTile<R, 1>(x, xs, p.w + static_cast<int64_t>(o) * p.in, p.in,
                     p.bias ? p.bias + o : nullptr, y + o, ys, p.accumulate);
  }
}

}  // namespace simd_impl

namespace internal {

// Rows [r_begin, r_end) x outputs [o_begin, o_end) of a matmul. Multiversioned (AVX2 + FMA
// clone on x86-64); not static so that the ifunc resolver is emitted reliably.
KVC_CPU_MULTIVERSION
void MatmulRange(const MatmulParams& p, int32_t r_begin, int32_t r_end, int32_t o_begin,
                 int32_t o_end) {
  const int64_t xs = p.x_stride ? p.x_stride : p.in;
  const int64_t ys = p.y_stride ? p.y_stride : p.out;
  int32_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) simd_impl::MatmulRowTile<4>(p, xs, ys, r, o_begin, o_end);
  switch (r_end - r) {
    case 3:
      simd_impl::MatmulRowTile<3>(p, xs, ys, r, o_begin, o_end);
      break;
    case 2:
      simd_impl::MatmulRowTile<2>(p, xs, ys, r, o_begin, o_end);
      break;
    case 1:
      simd_impl::MatmulRowTile<1>(p, xs, ys, r, o_begin, o_end);
      break;
    default:
      break;
  }
}

KVC_CPU_MULTIVERSION
float DotImpl(const float* a, const float* b, int32_t n) { return simd::Dot(a, b, n); }

}  // namespace internal

void Embedding(const EmbeddingParams& p) {
  const int64_t os = p.out_stride ? p.out_stride : p.hidden;
  for (int32_t t = 0; t < p.num_tokens; ++t) {
    std::memcpy(p.out + t * os, p.table + static_cast<int64_t>(p.ids[t]) * p.hidden,
                sizeof(float) * p.hidden);
  }
}

void RmsNorm(const RmsNormParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const int64_t rs = p.residual_stride ? p.residual_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  for (int32_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * xs;
    float* out = p.out + r * os;
    const float* src = x;
    if (p.residual != nullptr) {
      float* res = p.residual + r * rs;
      for (int32_t i = 0; i < p.dim; ++i) res[i] += x[i];
      src = res;
    }
    double ss = 0.0;
    for (int32_t i = 0; i < p.dim; ++i) ss += static_cast<double>(src[i]) * src[i];
    const float var = static_cast<float>(ss / p.dim);
    const float inv = 1.0f / std::sqrt(var + p.eps);
    for (int32_t i = 0; i < p.dim; ++i) out[i] = p.weight[i] * (src[i] * inv);
  }
}

std::vector<float> RopeInvFreq(const RopeFrequencyParams& p) {
  KVC_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0) << p.head_dim;
  const int32_t half = p.head_dim / 2;
  std::vector<float> inv(half);
  const float theta = static_cast<float>(p.theta);
  for (int32_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(p.head_dim);
    inv[i] = 1.0f / std::pow(theta, e);
  }
  if (!p.llama3) return inv;
  // transformers' _compute_llama3_parameters, in fp32.
  const float factor = static_cast<float>(p.factor);
  const float low = static_cast<float>(p.low_freq_factor);
  const float high = static_cast<float>(p.high_freq_factor);
  const float old_ctx = static_cast<float>(p.original_max_position_embeddings);
  const float low_wavelen = old_ctx / low;
  const float high_wavelen = old_ctx / high;
  for (int32_t i = 0; i < half; ++i) {
    const float wavelen = static_cast<float>(2.0 * M_PI) / inv[i];
    float f = wavelen > low_wavelen ? inv[i] / factor : inv[i];
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    if (medium) {
      const float smooth = (old_ctx / wavelen - low) / (high - low);
      f = (1.0f - smooth) * f / factor + smooth * f;
    }
    inv[i] = f;
  }
  return inv;
}

void Rope(const RopeParams& p) {
  const int32_t half = p.head_dim / 2;
  std::vector<float> cos_v(half), sin_v(half);
  for (int32_t t = 0; t < p.num_tokens; ++t) {
    const float pos = static_cast<float>(p.positions[t]);
    for (int32_t i = 0; i < half; ++i) {
      const float angle = pos * p.inv_freq[i];  // one fp32 product, as in transformers
      cos_v[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_v[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    float* row = p.x + t * p.stride + p.first_head_offset;
    for (int32_t h = 0; h < p.num_heads; ++h) {
      float* v = row + static_cast<int64_t>(h) * p.head_dim;
      for (int32_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos_v[i] - b * sin_v[i];
        v[i + half] = b * cos_v[i] + a * sin_v[i];
      }
    }
  }
}

void Matmul(const MatmulParams& p) {
  if (p.rows <= 0 || p.out <= 0) return;
  KVC_DCHECK(p.x != nullptr && p.w != nullptr && p.y != nullptr);
  // Work items: blocks of up to 64 rows x 64 outputs (a 64 x in block of W stays in L2 while
  // the row tiles stream past it).
  constexpr int32_t kRowBlock = 64, kOutBlock = 64;
  const int32_t row_blocks = (p.rows + kRowBlock - 1) / kRowBlock;
  const int32_t out_blocks = (p.out + kOutBlock - 1) / kOutBlock;
  const int64_t items = static_cast<int64_t>(row_blocks) * out_blocks;
  const int64_t item_flops =
      2LL * std::min(p.rows, kRowBlock) * std::min(p.out, kOutBlock) * std::max(p.in, 1);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 20) / item_flops);
  ParallelFor(items, min_chunk, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      // Out blocks vary fastest: neighbouring items share rows of x.
      const int32_t rb = static_cast<int32_t>(it / out_blocks);
      const int32_t ob = static_cast<int32_t>(it % out_blocks);
      internal::MatmulRange(p, rb * kRowBlock, std::min(p.rows, (rb + 1) * kRowBlock),
                            ob * kOutBlock, std::min(p.out, (ob + 1) * kOutBlock));
    }
  });
}

void SwiGlu(const SwiGluParams& p) {
  const int64_t gs = p.gate_stride ? p.gate_stride : p.dim;
  const int64_t us = p.up_stride ? p.up_stride : p.dim;
  const int64_t os = p.out_stride ? p.out_stride : p.dim;
  for (int32_t r = 0; r < p.rows; ++r) {
    const float* g = p.gate + r * gs;
    const float* u = p.up + r * us;
    float* o = p.out + r * os;
    for (int32_t i = 0; i < p.dim; ++i) {
      const float gv = g[i];
      o[i] = gv / (1.0f + std::exp(-gv)) * u[i];
    }
  }
}

float Dot(const float* a, const float* b, int32_t n) { return internal::DotImpl(a, b, n); }

}  // namespace kvc::cpu
