// DecodeAttention (paged, per-head block tables, GQA, split-K, decode scores) against
// cpu::PagedAttention + naive LSE/score references. Every (head_dim, block_size, group) of the
// closed set; ragged per-head lengths (1, b-1, b, b+1, 2b±1, ..., a long head for split-K, an
// empty head); shuffled block ids with spare blocks/table entries; four split modes (planned,
// single CTA per head = the split kernel's fused score pass, 16-KV chunks, two chunks = fewer
// splits than query heads in the combine+score kernel) that must all agree with the reference,
// each with decode scores off, on, and on with a scores array that is not 16-byte aligned (the
// scalar read-modify-write path).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/reference.h"

namespace kvc::gpu_test {
namespace {

struct DecodeCase {
  int head_dim;
  int block_size;
  int group;
};

std::string CaseName(const ::testing::TestParamInfo<DecodeCase>& info) {
  return "d" + std::to_string(info.param.head_dim) + "_b" + std::to_string(info.param.block_size) +
         "_g" + std::to_string(info.param.group);
}

enum class SplitMode { kPlanned, kSingle, kTiny, kTwo };

class DecodeAttentionTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeAttentionTest, MatchesReferenceAllSplitModes) {
  const DecodeCase c = GetParam();
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int S = 3;
  const int H = 2;
  const int Hq = H * c.group;
  const int d = c.head_dim;
  const int b = c.block_size;

  // Per-head lengths: edge lengths, one long head (split-K) and one empty head.
  std::vector<int32_t> pool = EdgeLengths(b);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> lengths(S * H);
  for (int i = 0; i < S * H; ++i) lengths[i] = pool[i % pool.size()];
  lengths[1] = SmallCases() ? 700 : 2600;
  lengths[4] = 0;
  std::vector<std::vector<int32_t>> slot_pos(S * H);
  for (int i = 0; i < S * H; ++i) {
    slot_pos[i].resize(lengths[i]);
    for (int j = 0; j < lengths[i]; ++j) slot_pos[i][j] = 3 * j + 1;
    std::shuffle(slot_pos[i].begin(), slot_pos[i].end(), rng);
  }
  PagedFixture f;
  f.Build(S, H, d, b, lengths, slot_pos, rng);
  const FloatPool fpool = ToFloatPool(f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Queries with a padded row stride (read from a wider buffer).
  const int64_t q_stride = static_cast<int64_t>(Hq) * d + 16;
  std::vector<Bf16> q_host = RandomBf16(static_cast<size_t>(S) * q_stride, rng, 2.0f);
  std::vector<float> q_dense(static_cast<size_t>(S) * Hq * d);
  for (int s = 0; s < S; ++s)
    for (int x = 0; x < Hq * d; ++x)
      q_dense[s * Hq * d + x] = Bf16ToFloat(q_host[s * q_stride + x]);
  DeviceBuffer<Bf16> d_q(q_host);

  // References.
  std::vector<float> out_ref;
  std::vector<double> lse_ref;
  for (int s = 0; s < S; ++s) {
    const int32_t qpos = std::numeric_limits<int32_t>::max();
    std::vector<float> o =
        CpuAttention(f, fpool, s, Hq, q_dense.data() + s * Hq * d, &qpos, 1, scale);
    out_ref.insert(out_ref.end(), o.begin(), o.end());
    for (int qh = 0; qh < Hq; ++qh) {
      lse_ref.push_back(NaiveLse(f, fpool, s * H + qh / c.group, q_dense.data() + (s * Hq + qh) * d,
                                 qpos, scale));
    }
  }
  const std::vector<double> score_ref = DecodeScoreDelta(f, fpool, Hq, q_dense, scale);

  const int32_t max_n = f.MaxNumKvs();
  for (SplitMode mode :
       {SplitMode::kPlanned, SplitMode::kSingle, SplitMode::kTiny, SplitMode::kTwo}) {
    for (int variant : {0, 1, 2}) {  // scores on; off; on with a misaligned scores array
      const bool scores = variant != 1;
      const bool misaligned = variant == 2;
      SCOPED_TRACE(std::string("mode ") + std::to_string(static_cast<int>(mode)) +
                   (scores ? " with scores" : " without scores") +
                   (misaligned ? " (misaligned)" : ""));
      kernels::DecodeAttentionPlan plan;
      if (mode == SplitMode::kPlanned) {
        plan = kernels::MakeDecodeAttentionPlan(S, H, Hq, d, max_n, 132, scores);
      } else {
        const int32_t full = (max_n + 15) / 16 * 16;
        plan.chunk_size = mode == SplitMode::kSingle ? full
                          : mode == SplitMode::kTwo  ? (max_n + 31) / 32 * 16
                                                     : 16;
        plan.num_splits = (max_n + plan.chunk_size - 1) / plan.chunk_size;
        plan.workspace_bytes = kernels::DecodeAttentionWorkspaceBytes(S, H, Hq, d, plan.num_splits,
                                                                      plan.chunk_size, scores);
      }
      if (mode == SplitMode::kPlanned) {
        EXPECT_GT(plan.num_splits, 1);
      }
      if (mode == SplitMode::kSingle) {
        EXPECT_EQ(plan.num_splits, 1);
      }
      if (mode == SplitMode::kTwo) {
        EXPECT_EQ(plan.num_splits, 2);
      }
      f.d_scores.Upload(f.scores);
      // Misaligned: the pool's scores start one float into a buffer (4 mod 16 bytes).
      std::vector<float> shifted(f.scores.size() + 1, 0.0f);
      std::copy(f.scores.begin(), f.scores.end(), shifted.begin() + 1);
      DeviceBuffer<float> d_shifted(misaligned ? shifted : std::vector<float>());
      DeviceBuffer<Bf16> d_out(static_cast<size_t>(S) * Hq * d);
      DeviceBuffer<float> d_lse(static_cast<size_t>(S) * Hq);
      DeviceBuffer<char> d_ws(static_cast<size_t>(plan.workspace_bytes));
      d_out.Poison();
      d_lse.Poison();
      d_ws.Poison();

      kernels::DecodeAttentionParams p;
      p.cache = f.Cache();
      if (misaligned) p.cache.scores = d_shifted.get() + 1;
      p.tables = f.Tables();
      p.num_q_heads = Hq;
      p.scale = scale;
      p.q = d_q.get();
      p.q_stride = q_stride;
      p.out = d_out.get();
      p.lse = d_lse.get();
      p.accumulate_scores = scores;
      p.num_splits = plan.num_splits;
      p.chunk_size = plan.chunk_size;
      p.workspace = d_ws.get();
      p.workspace_bytes = plan.workspace_bytes;
      const absl::Status st = kernels::DecodeAttention(p, nullptr);
      ASSERT_TRUE(st.ok()) << st;
      KVC_CUDA_CHECK(cudaDeviceSynchronize());
      KVC_CUDA_CHECK(cudaGetLastError());

      const std::vector<float> out = ToFloat(d_out.Download());
      const std::vector<float> lse = d_lse.Download();
      ErrorAccumulator all;
      double worst_row = 0.0;
      for (int row = 0; row < S * Hq; ++row) {
        ErrorAccumulator r;
        for (int x = 0; x < d; ++x) {
          r.Add(out[row * d + x], out_ref[row * d + x]);
          all.Add(out[row * d + x], out_ref[row * d + x]);
        }
        const ErrorStats rs = r.Stats();
        EXPECT_EQ(rs.non_finite, 0) << "row " << row;
        if (rs.ref_norm > 0) worst_row = std::max(worst_row, rs.rel);
        if (rs.ref_norm == 0) {
          EXPECT_EQ(rs.max_abs, 0.0) << "empty head row " << row;
        }
        EXPECT_LE(rs.rel, 1e-2) << "row " << row << " (seq " << row / Hq << ", q head " << row % Hq
                                << "): " << rs.Str();
      }
      for (int row = 0; row < S * Hq; ++row) {
        if (std::isinf(lse_ref[row])) {
          EXPECT_TRUE(std::isinf(lse[row]) && lse[row] < 0) << "row " << row << ": " << lse[row];
        } else {
          EXPECT_NEAR(lse[row], lse_ref[row], 1e-4 * std::max(1.0, std::fabs(lse_ref[row])))
              << "row " << row;
        }
      }
      std::vector<float> sc = f.d_scores.Download();
      ErrorAccumulator se;
      int64_t changed_outside = 0;
      if (misaligned) {
        EXPECT_EQ(sc, f.scores) << "the pool's own scores changed";
        sc = d_shifted.Download();
        EXPECT_EQ(sc[0], 0.0f) << "wrote before the scores array";
        sc.erase(sc.begin());
      }
      for (size_t i = 0; i < sc.size(); ++i) {
        const double got = static_cast<double>(sc[i]) - f.scores[i];
        const double want = scores ? score_ref[i] : 0.0;
        if (want == 0.0 && sc[i] != f.scores[i]) ++changed_outside;
        if (want != 0.0) se.Add(got, want);
      }
      EXPECT_EQ(changed_outside, 0) << "scores changed outside the heads' slots";
      if (scores) {
        EXPECT_TRUE(se.Stats().Ok(1e-4)) << "scores: " << se.Stats().Str();
      }
      std::printf(
          "[decode d%d b%d g%d mode %d scores %d splits %d] out %s | worst row rel %.3g | "
          "scores %s\n",
          d, b, c.group, static_cast<int>(mode), variant, plan.num_splits,
          all.Stats().Str().c_str(), worst_row, scores ? se.Stats().Str().c_str() : "-");
    }
  }
}

std::vector<DecodeCase> AllCases() {
  std::vector<DecodeCase> cases;
  for (int d : {64, 128})
    for (int b : {8, 16, 32})
      for (int g : {1, 2, 4, 8}) {
        if (SmallCases() && b != 16) continue;
        cases.push_back({d, b, g});
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(ClosedSet, DecodeAttentionTest, ::testing::ValuesIn(AllCases()), CaseName);

TEST(DecodeAttentionValidation, RejectsUnsupportedAndInconsistentParams) {
  std::mt19937 rng(1);
  PagedFixture f;
  f.Build(1, 2, 128, 16, {5, 9}, {{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8}}, rng);
  DeviceBuffer<Bf16> d_q(RandomBf16(4 * 128, rng));
  DeviceBuffer<Bf16> d_out(4 * 128);
  DeviceBuffer<char> d_ws(1 << 20);
  kernels::DecodeAttentionParams p;
  p.cache = f.Cache();
  p.tables = f.Tables();
  p.num_q_heads = 4;
  p.scale = 0.1f;
  p.q = d_q.get();
  p.out = d_out.get();
  p.num_splits = 1;
  p.chunk_size = 16;
  p.workspace = d_ws.get();
  p.workspace_bytes = 1 << 20;
  EXPECT_TRUE(kernels::DecodeAttention(p, nullptr).ok());

  auto expect_invalid = [&](kernels::DecodeAttentionParams bad, const std::string& field) {
    const absl::Status st = kernels::DecodeAttention(bad, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field << ": " << st;
    EXPECT_NE(std::string(st.message()).find(field), std::string::npos) << st;
  };
  kernels::DecodeAttentionParams bad = p;
  bad.cache.head_dim = 96;
  expect_invalid(bad, "head_dim");
  bad = p;
  bad.cache.block_size = 12;
  expect_invalid(bad, "block_size");
  bad = p;
  bad.num_q_heads = 6;  // group 3
  expect_invalid(bad, "group size");
  bad = p;
  bad.chunk_size = 8;
  expect_invalid(bad, "chunk_size");
  bad = p;
  bad.workspace_bytes = 8;
  bad.accumulate_scores = true;
  expect_invalid(bad, "workspace_bytes");
  bad = p;
  bad.q_stride = 12;
  expect_invalid(bad, "q_stride");
  bad = p;
  bad.q = d_q.get() + 1;
  expect_invalid(bad, "q is not 16-byte aligned");
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace kvc::gpu_test
