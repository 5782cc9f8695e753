// fp32 reference kernels of the Llama-family forward pass: embedding gather, RMSNorm (+ fused
// residual add), RoPE (HF rotate_half / "neox" layout, llama3 frequency scaling), matmul
// y = x·Wᵀ (+ bias) and SwiGLU. Every CUDA kernel of the same op is tested against these.
//
// Conventions: raw pointers into caller-owned row-major buffers, one by-value Params struct per
// family, `*_stride` = floats between consecutive rows (so a kernel can read or write a column
// slice of a wider buffer). Kernels do not validate inputs (callers do; debug builds check).
// All kernels are reentrant; the heavy ones (matmul) run on ThreadPool::Default().
#ifndef KVC_KERNELS_CPU_OPS_H_
#define KVC_KERNELS_CPU_OPS_H_

#include <cstdint>
#include <vector>

namespace kvc::cpu {

// ---- embedding -------------------------------------------------------------------------------

struct EmbeddingParams {
  int32_t num_tokens = 0;
  int32_t hidden = 0;
  const int32_t* ids = nullptr;  // [num_tokens], each in [0, vocab)
  const float* table = nullptr;  // [vocab, hidden]
  float* out = nullptr;          // [num_tokens, out_stride]
  int64_t out_stride = 0;        // 0 = hidden
};
void Embedding(const EmbeddingParams& p);

// ---- RMSNorm ---------------------------------------------------------------------------------

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight. With `residual` set (fused variant):
// residual[r] += x[r] first, and the norm is taken of the updated residual. out may alias x.
struct RmsNormParams {
  int32_t rows = 0;
  int32_t dim = 0;
  float eps = 1e-6f;
  const float* x = nullptr;       // [rows, x_stride]
  int64_t x_stride = 0;           // 0 = dim
  const float* weight = nullptr;  // [dim]
  float* residual = nullptr;      // optional [rows, residual_stride]
  int64_t residual_stride = 0;    // 0 = dim
  float* out = nullptr;           // [rows, out_stride]
  int64_t out_stride = 0;         // 0 = dim
};
void RmsNorm(const RmsNormParams& p);

// ---- RoPE ------------------------------------------------------------------------------------

struct RopeFrequencyParams {
  int32_t head_dim = 0;  // even
  double theta = 10000.0;
  bool llama3 = false;  // llama3 scaling (Llama 3.1+) with the fields below
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};
// Inverse frequencies [head_dim / 2], computed in fp32 the way transformers does (bit-for-bit
// where the platform's powf matches torch's).
std::vector<float> RopeInvFreq(const RopeFrequencyParams& p);

// Rotates, in place, `num_heads` heads of `head_dim` at x[t * stride + first_head_offset +
// h * head_dim] for every token t by angle positions[t] * inv_freq[i], pairing element i with
// i + head_dim/2 (HF rotate_half): (a, b) -> (a cos - b sin, b cos + a sin). The angle is one
// fp32 product and cos/sin are rounded to fp32, as in transformers.
struct RopeParams {
  int32_t num_tokens = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  float* x = nullptr;
  int64_t stride = 0;                  // floats between tokens
  int64_t first_head_offset = 0;       // floats from a token's row start to head 0
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [head_dim / 2]
};
void Rope(const RopeParams& p);

// ---- matmul ----------------------------------------------------------------------------------

// y[r, o] (+)= sum_k x[r, k] * w[o, k] + bias[o], for W in the HF Linear layout [out, in].
// With `accumulate`, the product (+ bias) is added to y (residual connections).
// Each dot product is summed in a fixed order that depends only on `in`, so the result of a
// row does not depend on how many rows are in the batch or on the thread count.
struct MatmulParams {
  int32_t rows = 0;
  int32_t in = 0;
  int32_t out = 0;
  const float* x = nullptr;     // [rows, x_stride]
  int64_t x_stride = 0;         // 0 = in
  const float* w = nullptr;     // [out, in]
  const float* bias = nullptr;  // optional [out]
  float* y = nullptr;           // [rows, y_stride]
  int64_t y_stride = 0;         // 0 = out
  bool accumulate = false;
};
void Matmul(const MatmulParams& p);

// ---- SwiGLU ----------------------------------------------------------------------------------

// out[r, i] = silu(gate[r, i]) * up[r, i], silu(g) = g / (1 + exp(-g)). out may alias gate.
struct SwiGluParams {
  int32_t rows = 0;
  int32_t dim = 0;
  const float* gate = nullptr;
  int64_t gate_stride = 0;  // 0 = dim
  const float* up = nullptr;
  int64_t up_stride = 0;  // 0 = dim
  float* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
};
void SwiGlu(const SwiGluParams& p);

// Dot product of n floats (8 lanes, fixed summation order; the attention kernel's dot).
float Dot(const float* a, const float* b, int32_t n);

}  // namespace kvc::cpu

#endif  // KVC_KERNELS_CPU_OPS_H_
