// AppendKv against a host emulation of the append rule: new token i of sequence s goes to logical
// slot num_kvs[s, h] - n_s + i of every kv head h (tables already count the new tokens), with
// its position stored and its score zeroed; nothing else in the pool may change. Ragged
// per-head histories (0, b-1, b, b+1, ...), shuffled block ids, K/V read through row strides
// (as from a fused QKV buffer); the comparison is bit-exact.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvc::gpu_test {
namespace {

class KvAppendTest : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(KvAppendTest, ScattersIntoEachHeadsTailSlots) {
  const int d = GetParam().first;
  const int b = GetParam().second;
  const uint32_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int S = 4;
  const int H = 3;
  const std::vector<int> new_tokens = {1, 5, 2 * b + 1, 1};
  // History per head before the append (ragged, as after compression).
  const std::vector<int> hist = {0, b - 1, b, b + 1, 3, 2 * b, 0, 0, 0, 7 * b - 1, 1, 2 * b + 3};
  std::vector<int32_t> lengths(S * H);
  std::vector<std::vector<int32_t>> slot_pos(S * H);
  for (int s = 0; s < S; ++s) {
    for (int h = 0; h < H; ++h) {
      const int hd = s * H + h;
      lengths[hd] = hist[hd] + new_tokens[s];
      for (int i = 0; i < lengths[hd]; ++i) slot_pos[hd].push_back(-5);  // overwritten below
    }
  }
  PagedFixture f;
  f.Build(S, H, d, b, lengths, slot_pos, rng, /*extra=*/b);
  // Old slots: random positions; the pool is otherwise random (garbage) data.
  for (int hd = 0; hd < S * H; ++hd)
    for (int i = 0; i < hist[hd]; ++i) f.positions[f.Slot(hd, i)] = i * 2;
  f.Upload();

  // New K/V rows inside wider "QKV" rows: [q (8 heads) | k (H heads) | v (H heads) | pad].
  std::vector<int32_t> cu = {0};
  for (int s = 0; s < S; ++s) cu.push_back(cu.back() + new_tokens[s]);
  const int T = cu.back();
  const int64_t row = static_cast<int64_t>(8 + 2 * H) * d + 8;
  std::vector<Bf16> qkv = RandomBf16(static_cast<size_t>(T) * row, rng);
  std::vector<int32_t> tok_pos(T);
  for (int t = 0; t < T; ++t) tok_pos[t] = 10000 + 3 * t;
  DeviceBuffer<Bf16> d_qkv(qkv);
  DeviceBuffer<int32_t> d_cu(cu);
  DeviceBuffer<int32_t> d_pos(tok_pos);

  kernels::KvAppendParams p;
  p.cache = f.Cache();
  p.tables = f.Tables();
  p.num_tokens = T;
  p.cu_tokens = d_cu.get();
  p.token_positions = d_pos.get();
  p.k = d_qkv.get() + 8 * d;
  p.k_stride = row;
  p.v = d_qkv.get() + (8 + H) * d;
  p.v_stride = row;
  const absl::Status st = kernels::AppendKv(p, nullptr);
  ASSERT_TRUE(st.ok()) << st;

  // Host emulation.
  std::vector<Bf16> k = f.k;
  std::vector<Bf16> v = f.v;
  std::vector<int32_t> pos = f.positions;
  std::vector<float> sc = f.scores;
  for (int s = 0; s < S; ++s) {
    for (int i = 0; i < new_tokens[s]; ++i) {
      const int t = cu[s] + i;
      for (int h = 0; h < H; ++h) {
        const int hd = s * H + h;
        const int64_t slot = f.Slot(hd, f.num_kvs[hd] - new_tokens[s] + i);
        std::memcpy(&k[slot * d], &qkv[t * row + (8 + h) * d], d * sizeof(Bf16));
        std::memcpy(&v[slot * d], &qkv[t * row + (8 + H + h) * d], d * sizeof(Bf16));
        pos[slot] = tok_pos[t];
        sc[slot] = 0.0f;
      }
    }
  }
  const std::vector<Bf16> gk = f.d_k.Download();
  const std::vector<Bf16> gv = f.d_v.Download();
  const std::vector<int32_t> gpos = f.d_positions.Download();
  const std::vector<float> gsc = f.d_scores.Download();
  int64_t k_bad = 0, v_bad = 0, pos_bad = 0, sc_bad = 0;
  for (size_t i = 0; i < k.size(); ++i) {
    k_bad += gk[i].bits != k[i].bits;
    v_bad += gv[i].bits != v[i].bits;
  }
  for (size_t i = 0; i < pos.size(); ++i) {
    pos_bad += gpos[i] != pos[i];
    sc_bad += std::memcmp(&gsc[i], &sc[i], sizeof(float)) != 0;
  }
  EXPECT_EQ(k_bad, 0);
  EXPECT_EQ(v_bad, 0);
  EXPECT_EQ(pos_bad, 0);
  EXPECT_EQ(sc_bad, 0);
}

INSTANTIATE_TEST_SUITE_P(ClosedSet, KvAppendTest,
                         ::testing::Values(std::make_pair(64, 8), std::make_pair(64, 16),
                                           std::make_pair(64, 32), std::make_pair(128, 8),
                                           std::make_pair(128, 16), std::make_pair(128, 32)),
                         [](const ::testing::TestParamInfo<std::pair<int, int>>& info) {
                           return "d" + std::to_string(info.param.first) + "_b" +
                                  std::to_string(info.param.second);
                         });

TEST(KvAppendValidation, RejectsBadParams) {
  kernels::KvAppendParams p;
  p.cache.head_dim = 80;
  EXPECT_EQ(kernels::AppendKv(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvc::gpu_test
