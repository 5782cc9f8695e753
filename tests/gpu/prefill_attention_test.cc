// PrefillAttention (flash-style, causal by stored position, varlen, GQA, paged per-head K/V) and
// AccumulateWindowScores (KV-Compress prefill scores from the last w queries) against
// cpu::PagedAttention and the naive references of reference.h, for every (head_dim,
// block_size, group) of the closed set. One varlen batch covers: a fresh prefill (slot order ==
// position order, several row tiles), a chunked prefill after compression (ragged per-head
// history with gaps in its positions and shuffled slot order, then new tokens), a one-token
// sequence with a one-KV head, and queries that see no KV at all in one head.
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

struct PrefillCase {
  int head_dim;
  int block_size;
  int group;
};

std::string CaseName(const ::testing::TestParamInfo<PrefillCase>& info) {
  return "d" + std::to_string(info.param.head_dim) + "_b" + std::to_string(info.param.block_size) +
         "_g" + std::to_string(info.param.group);
}

constexpr int kSeqs = 4;
constexpr int kKvHeads = 2;

struct PrefillProblem {
  PagedFixture f;
  int num_q_heads = 0;
  int num_tokens = 0;
  int max_q_len = 0;
  float scale = 0.0f;
  std::vector<int32_t> cu_q, q_pos;
  std::vector<Bf16> q;  // [num_tokens, num_q_heads * d]
  std::vector<float> q_float;
};

PrefillProblem MakeProblem(const PrefillCase& c, std::mt19937& rng) {
  PrefillProblem pr;
  const int b = c.block_size;
  const int d = c.head_dim;
  const bool small = SmallCases();
  pr.num_q_heads = kKvHeads * c.group;
  pr.scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<int32_t> lengths(kSeqs * kKvHeads);
  std::vector<std::vector<int32_t>> slot_pos(kSeqs * kKvHeads);
  std::vector<std::vector<int32_t>> qpos(kSeqs);

  // seq 0: fresh prefill of n0 tokens; every head holds them in position order.
  const int n0 = small ? 2 * b + 1 : 150;
  for (int h = 0; h < kKvHeads; ++h) {
    for (int i = 0; i < n0; ++i) slot_pos[0 * kKvHeads + h].push_back(i);
  }
  for (int i = 0; i < n0; ++i) qpos[0].push_back(i);

  // seq 1: chunked prefill after compression: head h keeps hist[h] of the first 400 positions
  // (a random subset, slots shuffled as compaction leaves them), then n1 new tokens.
  const int n1 = small ? 20 : 50;
  const int hist[kKvHeads] = {b - 1, small ? 3 * b + 1 : 217};
  for (int h = 0; h < kKvHeads; ++h) {
    std::vector<int32_t> all(400);
    for (int i = 0; i < 400; ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t>& sp = slot_pos[1 * kKvHeads + h];
    sp.assign(all.begin(), all.begin() + hist[h]);
    for (int i = 0; i < n1; ++i) sp.push_back(400 + i);
  }
  for (int i = 0; i < n1; ++i) qpos[1].push_back(400 + i);

  // seq 2: one token at position b + 1; head 0 holds only it, head 1 all b + 2 KVs.
  slot_pos[2 * kKvHeads + 0] = {b + 1};
  for (int i = 0; i <= b + 1; ++i) slot_pos[2 * kKvHeads + 1].push_back(i);
  qpos[2] = {b + 1};

  // seq 3: queries at positions 10..12; head 0 holds positions {5, 1000..1010}, head 1 only
  // positions >= 2000 (its queries see nothing: zero output, lse -inf).
  slot_pos[3 * kKvHeads + 0] = {5};
  for (int i = 0; i <= 10; ++i) slot_pos[3 * kKvHeads + 0].push_back(1000 + i);
  for (int i = 0; i < 7; ++i) slot_pos[3 * kKvHeads + 1].push_back(2000 + i);
  qpos[3] = {10, 11, 12};

  for (int i = 0; i < kSeqs * kKvHeads; ++i) lengths[i] = static_cast<int32_t>(slot_pos[i].size());
  pr.f.Build(kSeqs, kKvHeads, d, b, lengths, slot_pos, rng);

  pr.cu_q.push_back(0);
  for (int s = 0; s < kSeqs; ++s) {
    pr.q_pos.insert(pr.q_pos.end(), qpos[s].begin(), qpos[s].end());
    pr.cu_q.push_back(static_cast<int32_t>(pr.q_pos.size()));
    pr.max_q_len = std::max<int>(pr.max_q_len, qpos[s].size());
  }
  pr.num_tokens = static_cast<int>(pr.q_pos.size());
  pr.q = RandomBf16(static_cast<size_t>(pr.num_tokens) * pr.num_q_heads * d, rng, 2.0f);
  pr.q_float = ToFloat(pr.q);
  return pr;
}

struct PrefillRun {
  DeviceBuffer<Bf16> d_q;
  DeviceBuffer<int32_t> d_cu_q, d_q_pos;
  DeviceBuffer<Bf16> d_out;
  DeviceBuffer<float> d_lse;
};

// Runs PrefillAttention on the GPU (outputs poisoned first).
void RunPrefill(PrefillProblem& pr, PrefillRun* run) {
  const int d = pr.f.head_dim;
  run->d_q = DeviceBuffer<Bf16>(pr.q);
  run->d_cu_q = DeviceBuffer<int32_t>(pr.cu_q);
  run->d_q_pos = DeviceBuffer<int32_t>(pr.q_pos);
  run->d_out = DeviceBuffer<Bf16>(static_cast<size_t>(pr.num_tokens) * pr.num_q_heads * d);
  run->d_lse = DeviceBuffer<float>(static_cast<size_t>(pr.num_tokens) * pr.num_q_heads);
  run->d_out.Poison();
  run->d_lse.Poison();
  kernels::PrefillAttentionParams p;
  p.cache = pr.f.Cache();
  p.tables = pr.f.Tables();
  p.num_q_heads = pr.num_q_heads;
  p.scale = pr.scale;
  p.num_tokens = pr.num_tokens;
  p.max_q_len = pr.max_q_len;
  p.cu_q = run->d_cu_q.get();
  p.q_positions = run->d_q_pos.get();
  p.q = run->d_q.get();
  p.out = run->d_out.get();
  p.lse = run->d_lse.get();
  const absl::Status st = kernels::PrefillAttention(p, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
}

// Compares out and lse of `run` with the CPU reference for every sequence of `pr`.
void CheckAgainstReference(const PrefillProblem& pr, PrefillRun& run, const char* label) {
  const int d = pr.f.head_dim;
  const int Hq = pr.num_q_heads;
  const int H = pr.f.num_kv_heads;
  const int group = Hq / H;
  const FloatPool fpool = ToFloatPool(pr.f);
  const std::vector<float> out = ToFloat(run.d_out.Download());
  const std::vector<float> lse = run.d_lse.Download();
  ErrorAccumulator all;
  double worst_row = 0.0;
  double worst_lse = 0.0;
  for (int s = 0; s < pr.f.num_seqs; ++s) {
    const int t0 = pr.cu_q[s];
    const int nq = pr.cu_q[s + 1] - t0;
    const std::vector<float> ref = CpuAttention(pr.f, fpool, s, Hq, pr.q_float.data() + t0 * Hq * d,
                                                pr.q_pos.data() + t0, nq, pr.scale);
    for (int t = 0; t < nq; ++t) {
      for (int qh = 0; qh < Hq; ++qh) {
        const size_t row = static_cast<size_t>(t0 + t) * Hq + qh;
        ErrorAccumulator r;
        for (int x = 0; x < d; ++x) {
          r.Add(out[row * d + x], ref[(static_cast<size_t>(t) * Hq + qh) * d + x]);
          all.Add(out[row * d + x], ref[(static_cast<size_t>(t) * Hq + qh) * d + x]);
        }
        const ErrorStats rs = r.Stats();
        EXPECT_EQ(rs.non_finite, 0) << "seq " << s << " token " << t << " head " << qh;
        if (rs.ref_norm == 0) {
          EXPECT_EQ(rs.max_abs, 0.0) << "seq " << s << " token " << t << " head " << qh;
        } else {
          worst_row = std::max(worst_row, rs.rel);
        }
        EXPECT_LE(rs.rel, 1e-2) << "seq " << s << " token " << t << " head " << qh << ": "
                                << rs.Str();
        const double lref = NaiveLse(pr.f, fpool, s * H + qh / group, pr.q_float.data() + row * d,
                                     pr.q_pos[t0 + t], pr.scale);
        if (std::isinf(lref)) {
          EXPECT_TRUE(std::isinf(lse[row]) && lse[row] < 0) << "row " << row << ": " << lse[row];
        } else {
          const double err = std::fabs(lse[row] - lref) / std::max(1.0, std::fabs(lref));
          worst_lse = std::max(worst_lse, err);
          EXPECT_LE(err, 1e-4) << "lse of seq " << s << " token " << t << " head " << qh << ": "
                               << lse[row] << " vs " << lref;
        }
      }
    }
  }
  std::printf("[prefill %s] out %s | worst row rel %.3g | worst lse rel %.3g\n", label,
              all.Stats().Str().c_str(), worst_row, worst_lse);
}

class PrefillAttentionTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(PrefillAttentionTest, MatchesReference) {
  const PrefillCase c = GetParam();
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  PrefillProblem pr = MakeProblem(c, rng);
  PrefillRun run;
  RunPrefill(pr, &run);
  if (HasFatalFailure()) return;
  const std::string label = "d" + std::to_string(c.head_dim) + " b" + std::to_string(c.block_size) +
                            " g" + std::to_string(c.group);
  CheckAgainstReference(pr, run, label.c_str());
}

// Long heads (more than 32 KV tiles: several words of the kernel's tile bitmap; smaller under
// the sanitizers). Sequence 0 is a fresh prefill of kLong tokens: head 0 in position order (the
// CTAs skip every tile past their queries), head 1 in reverse slot order (the walk starts past
// the first tiles). Sequence 1 is the second chunk of a chunked prefill (the last kChunk
// positions as queries over the whole history): head 0 in position order, head 1 shuffled
// (every tile mixes visible and newer KVs).
TEST(PrefillAttentionLongTest, MatchesReference) {
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (const PrefillCase& c : {PrefillCase{128, 16, 2}, PrefillCase{64, 32, 8}}) {
    const int kLong = SmallCases() ? 300 : 2300;
    const int kChunk = SmallCases() ? 100 : 300;
    PrefillProblem pr;
    pr.num_q_heads = 2 * c.group;
    pr.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    std::vector<std::vector<int32_t>> slot_pos(4);
    for (int i = 0; i < kLong; ++i) {
      slot_pos[0].push_back(i);
      slot_pos[1].push_back(i);
      slot_pos[2].push_back(i);
      slot_pos[3].push_back(i);
    }
    std::reverse(slot_pos[1].begin(), slot_pos[1].end());
    std::shuffle(slot_pos[3].begin(), slot_pos[3].end(), rng);
    pr.f.Build(2, 2, c.head_dim, c.block_size, {kLong, kLong, kLong, kLong}, slot_pos, rng);
    pr.cu_q = {0, kLong, kLong + kChunk};
    for (int i = 0; i < kLong; ++i) pr.q_pos.push_back(i);
    for (int i = kLong - kChunk; i < kLong; ++i) pr.q_pos.push_back(i);
    pr.num_tokens = kLong + kChunk;
    pr.max_q_len = kLong;
    pr.q = RandomBf16(static_cast<size_t>(pr.num_tokens) * pr.num_q_heads * c.head_dim, rng, 2.0f);
    pr.q_float = ToFloat(pr.q);
    PrefillRun run;
    RunPrefill(pr, &run);
    if (HasFatalFailure()) return;
    const std::string label = "long d" + std::to_string(c.head_dim) + " b" +
                              std::to_string(c.block_size) + " g" + std::to_string(c.group);
    CheckAgainstReference(pr, run, label.c_str());
  }
}

class WindowScoresTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(WindowScoresTest, MatchesReference) {
  const PrefillCase c = GetParam();
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  PrefillProblem pr = MakeProblem(c, rng);
  PrefillRun run;
  RunPrefill(pr, &run);  // its LSE feeds the window scores, as in the executor
  if (HasFatalFailure()) return;
  const FloatPool fpool = ToFloatPool(pr.f);
  const int32_t max_n = pr.f.MaxNumKvs();
  const int64_t ws_bytes =
      kernels::WindowScoreWorkspaceBytes(kSeqs, kKvHeads, pr.num_q_heads, max_n);
  DeviceBuffer<char> d_ws(static_cast<size_t>(ws_bytes));

  struct Setting {
    int window, pool;
  };
  const Setting settings[] = {{8, 7}, {32, 7}, {1, 0}, {100, 3}, {32, 1}};
  for (const Setting& st : settings) {
    SCOPED_TRACE("window " + std::to_string(st.window) + " pool " + std::to_string(st.pool));
    pr.f.d_scores.Upload(pr.f.scores);
    d_ws.Poison();
    kernels::WindowScoreParams p;
    p.cache = pr.f.Cache();
    p.tables = pr.f.Tables();
    p.num_q_heads = pr.num_q_heads;
    p.scale = pr.scale;
    p.window = st.window;
    p.pool_kernel = st.pool;
    p.cu_q = run.d_cu_q.get();
    p.q_positions = run.d_q_pos.get();
    p.q = run.d_q.get();
    p.lse = run.d_lse.get();
    p.workspace = d_ws.get();
    p.workspace_bytes = ws_bytes;
    const absl::Status status = kernels::AccumulateWindowScores(p, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    const std::vector<float> sc = pr.f.d_scores.Download();
    const std::vector<double> ref = WindowScoreDelta(
        pr.f, fpool, pr.num_q_heads, pr.q_float, pr.cu_q, pr.q_pos, pr.scale, st.window, st.pool);
    // Slots of the heads: delta vs reference; every other slot: untouched.
    std::vector<char> owned(sc.size(), 0);
    for (int hd = 0; hd < kSeqs * kKvHeads; ++hd)
      for (int i = 0; i < pr.f.num_kvs[hd]; ++i) owned[pr.f.Slot(hd, i)] = 1;
    ErrorAccumulator e;
    int64_t changed_outside = 0;
    for (size_t i = 0; i < sc.size(); ++i) {
      if (owned[i]) {
        e.Add(static_cast<double>(sc[i]) - pr.f.scores[i], ref[i]);
      } else if (sc[i] != pr.f.scores[i]) {
        ++changed_outside;
      }
    }
    EXPECT_EQ(changed_outside, 0);
    EXPECT_GT(e.Stats().ref_norm, 0.0);
    EXPECT_TRUE(e.Stats().Ok(1e-4)) << e.Stats().Str();
    std::printf("[window d%d b%d g%d w%d pool%d] scores %s\n", c.head_dim, c.block_size, c.group,
                st.window, st.pool, e.Stats().Str().c_str());
  }
}

std::vector<PrefillCase> AllCases() {
  std::vector<PrefillCase> cases;
  for (int d : {64, 128})
    for (int b : {8, 16, 32})
      for (int g : {1, 2, 4, 8}) {
        if (SmallCases() && b != 16) continue;
        cases.push_back({d, b, g});
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(ClosedSet, PrefillAttentionTest, ::testing::ValuesIn(AllCases()),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(ClosedSet, WindowScoresTest, ::testing::ValuesIn(AllCases()), CaseName);

TEST(PrefillAttentionValidation, RejectsBadParams) {
  std::mt19937 rng(2);
  PrefillProblem pr = MakeProblem({64, 16, 4}, rng);
  PrefillRun run;
  RunPrefill(pr, &run);
  kernels::PrefillAttentionParams p;
  p.cache = pr.f.Cache();
  p.tables = pr.f.Tables();
  p.num_q_heads = pr.num_q_heads;
  p.scale = pr.scale;
  p.num_tokens = pr.num_tokens;
  p.max_q_len = pr.max_q_len;
  p.cu_q = run.d_cu_q.get();
  p.q_positions = run.d_q_pos.get();
  p.q = run.d_q.get();
  p.out = run.d_out.get();
  kernels::PrefillAttentionParams bad = p;
  bad.max_q_len = 0;
  EXPECT_EQ(kernels::PrefillAttention(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.cache.positions = nullptr;
  EXPECT_EQ(kernels::PrefillAttention(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.out_stride = 100;
  EXPECT_EQ(kernels::PrefillAttention(bad, nullptr).code(), absl::StatusCode::kInvalidArgument);

  kernels::WindowScoreParams w;
  w.cache = pr.f.Cache();
  w.tables = pr.f.Tables();
  w.num_q_heads = pr.num_q_heads;
  w.cu_q = run.d_cu_q.get();
  w.q_positions = run.d_q_pos.get();
  w.q = run.d_q.get();
  w.lse = run.d_lse.get();
  w.pool_kernel = 4;
  EXPECT_EQ(kernels::AccumulateWindowScores(w, nullptr).code(), absl::StatusCode::kInvalidArgument);
  w.pool_kernel = 7;
  w.workspace_bytes = 0;  // too small
  EXPECT_EQ(kernels::AccumulateWindowScores(w, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvc::gpu_test
