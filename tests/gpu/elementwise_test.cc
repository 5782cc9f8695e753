// RMSNorm (+ fused residual), RoPE (neox, llama3 scaling) and SwiGLU on bf16 against the fp32
// reference kernels of kernels/cpu/ops.h on the same bf16-rounded inputs; FillRandom's range
// and determinism.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvc::gpu_test {
namespace {

ErrorStats Compare(const std::vector<Bf16>& got, const std::vector<float>& ref) {
  ErrorAccumulator e;
  for (size_t i = 0; i < ref.size(); ++i) e.Add(Bf16ToFloat(got[i]), ref[i]);
  return e.Stats();
}

TEST(RmsNormTest, MatchesCpuWithAndWithoutResidual) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int dim : {64, 4096}) {
    for (bool fused : {false, true}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + (fused ? " fused" : ""));
      const int rows = 7;
      const int64_t xs = dim + 16;  // x read through a stride
      std::vector<Bf16> x = RandomBf16(rows * xs, rng, 3.0f);
      std::vector<Bf16> w = RandomBf16(dim, rng, 1.0f);
      std::vector<Bf16> res = RandomBf16(rows * dim, rng, 3.0f);
      DeviceBuffer<Bf16> d_x(x), d_w(w), d_res(res), d_out(rows * dim);
      d_out.Poison();
      kernels::RmsNormParams p;
      p.rows = rows;
      p.dim = dim;
      p.eps = 1e-5f;
      p.x = d_x.get();
      p.x_stride = xs;
      p.weight = d_w.get();
      p.residual = fused ? d_res.get() : nullptr;
      p.out = d_out.get();
      const absl::Status st = kernels::RmsNorm(p, nullptr);
      ASSERT_TRUE(st.ok()) << st;

      std::vector<float> xf = ToFloat(x), wf = ToFloat(w), rf = ToFloat(res);
      std::vector<float> ref(rows * dim);
      cpu::RmsNormParams cp;
      cp.rows = rows;
      cp.dim = dim;
      cp.eps = 1e-5f;
      cp.x = xf.data();
      cp.x_stride = xs;
      cp.weight = wf.data();
      cp.residual = fused ? rf.data() : nullptr;
      cp.out = ref.data();
      cpu::RmsNorm(cp);
      const ErrorStats es = Compare(d_out.Download(), ref);
      EXPECT_TRUE(es.Ok(1e-2)) << es.Str();
      if (fused) {
        const ErrorStats rs = Compare(d_res.Download(), rf);
        EXPECT_TRUE(rs.Ok(1e-2)) << "residual: " << rs.Str();
      }
      std::printf("[rmsnorm dim %d fused %d] %s\n", dim, fused, es.Str().c_str());
    }
  }
}

TEST(RopeTest, MatchesCpuLlama3) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int d : {64, 128}) {
    for (bool llama3 : {false, true}) {
      SCOPED_TRACE("head_dim " + std::to_string(d) + (llama3 ? " llama3" : ""));
      const int tokens = 9;
      const int hq = 8, hk = 2;
      const int64_t stride = (hq + 2 * hk) * d;  // QKV rows; q and k heads rotated in one launch
      std::vector<Bf16> x = RandomBf16(tokens * stride, rng);
      std::vector<int32_t> pos(tokens);
      std::uniform_int_distribution<int32_t> pd(0, 131071);
      for (int32_t& v : pos) v = pd(rng);
      pos[0] = 0;
      cpu::RopeFrequencyParams fp;
      fp.head_dim = d;
      fp.theta = 500000.0;
      fp.llama3 = llama3;
      const std::vector<float> inv = cpu::RopeInvFreq(fp);
      DeviceBuffer<Bf16> d_x(x);
      DeviceBuffer<int32_t> d_pos(pos);
      DeviceBuffer<float> d_inv(inv);
      kernels::RopeParams p;
      p.num_tokens = tokens;
      p.num_heads = hq + hk;
      p.head_dim = d;
      p.x = d_x.get();
      p.stride = stride;
      p.positions = d_pos.get();
      p.inv_freq = d_inv.get();
      const absl::Status st = kernels::Rope(p, nullptr);
      ASSERT_TRUE(st.ok()) << st;

      std::vector<float> ref = ToFloat(x);
      cpu::RopeParams cp;
      cp.num_tokens = tokens;
      cp.num_heads = hq + hk;
      cp.head_dim = d;
      cp.x = ref.data();
      cp.stride = stride;
      cp.positions = pos.data();
      cp.inv_freq = inv.data();
      cpu::Rope(cp);
      const std::vector<Bf16> got = d_x.Download();
      const ErrorStats es = Compare(got, ref);
      EXPECT_TRUE(es.Ok(1e-2)) << es.Str();
      // V heads (after q and k) are untouched.
      int64_t v_changed = 0;
      for (int t = 0; t < tokens; ++t)
        for (int64_t i = (hq + hk) * d; i < stride; ++i)
          v_changed += got[t * stride + i].bits != x[t * stride + i].bits;
      EXPECT_EQ(v_changed, 0);
      std::printf("[rope d%d llama3 %d] %s\n", d, llama3, es.Str().c_str());
    }
  }
}

TEST(SwiGluTest, MatchesCpu) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int rows = 5, dim = 1376;
  // gate | up side by side in one [rows, 2 * dim] buffer, output in place into gate.
  std::vector<Bf16> gu = RandomBf16(rows * 2 * dim, rng, 2.0f);
  DeviceBuffer<Bf16> d_gu(gu);
  kernels::SwiGluParams p;
  p.rows = rows;
  p.dim = dim;
  p.gate = d_gu.get();
  p.gate_stride = 2 * dim;
  p.up = d_gu.get() + dim;
  p.up_stride = 2 * dim;
  p.out = d_gu.get();
  p.out_stride = 2 * dim;
  const absl::Status st = kernels::SwiGlu(p, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  std::vector<float> f = ToFloat(gu);
  std::vector<float> ref(rows * dim);
  cpu::SwiGluParams cp;
  cp.rows = rows;
  cp.dim = dim;
  cp.gate = f.data();
  cp.gate_stride = 2 * dim;
  cp.up = f.data() + dim;
  cp.up_stride = 2 * dim;
  cp.out = ref.data();
  cpu::SwiGlu(cp);
  const std::vector<Bf16> all = d_gu.Download();
  std::vector<Bf16> got(rows * dim);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < dim; ++i) got[r * dim + i] = all[r * 2 * dim + i];
  const ErrorStats es = Compare(got, ref);
  EXPECT_TRUE(es.Ok(1e-2)) << es.Str();
  std::printf("[swiglu] %s\n", es.Str().c_str());
}

TEST(FillRandomTest, DeterministicAndInRange) {
  const int64_t n = 100003;
  DeviceBuffer<Bf16> a(n), b(n);
  kernels::FillRandomParams p;
  p.data = a.get();
  p.n = n;
  p.seed = 42;
  p.scale = 0.5f;
  ASSERT_TRUE(kernels::FillRandom(p, nullptr).ok());
  p.data = b.get();
  ASSERT_TRUE(kernels::FillRandom(p, nullptr).ok());
  const std::vector<Bf16> ha = a.Download(), hb = b.Download();
  double sum = 0.0, sum2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(ha[i].bits, hb[i].bits) << i;
    const float x = Bf16ToFloat(ha[i]);
    ASSERT_TRUE(x >= -0.5f && x <= 0.5f) << i << ": " << x;
    sum += x;
    sum2 += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum2 / n, 0.25 / 3.0, 0.01);  // variance of U(-a, a) = a^2 / 3
}

TEST(ElementwiseValidation, RejectsBadParams) {
  kernels::RmsNormParams r;
  r.rows = 1;
  r.dim = 12;
  EXPECT_EQ(kernels::RmsNorm(r, nullptr).code(), absl::StatusCode::kInvalidArgument);
  kernels::RopeParams q;
  q.num_tokens = 1;
  q.num_heads = 1;
  q.head_dim = 7;
  EXPECT_EQ(kernels::Rope(q, nullptr).code(), absl::StatusCode::kInvalidArgument);
  kernels::SwiGluParams s;
  s.rows = 1;
  s.dim = 8;
  EXPECT_EQ(kernels::SwiGlu(s, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvc::gpu_test
