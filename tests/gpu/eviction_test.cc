// Device-side KV-Compress eviction (kernels/include/kvc/kernels/eviction.h and
// CudaExecutor::EvictOnDevice) against the CPU planner (kvmanager/eviction_plan.h), which is the
// reference:
//   * kernel level: random sequences (ragged per-head lengths: 0, 1, b-1, b, b+1, multiples of b
//     +-1, heads at the per-head minimum, up to thousands of KVs; scores with ties, -0/+0, NaN,
//     +-inf; distinct or repeated positions; random protected window, sinks and minimum; B from 0
//     to more than can be evicted; block sizes 8/16/32; head_dim 64/128). After the kernels, the
//     blocks freed per head equal EvictionPlanner::Plan's, and the WHOLE pool (K and V rows,
//     scores, positions of every slot) equals a host copy to which the CPU plan's moves were
//     applied, bit for bit: same evicted KVs and the same compaction order. The plan's moves are
//     also checked to never overlap (destination < n' <= source). Bad Params return
//     INVALID_ARGUMENT.
//   * executor level: two CudaExecutors with the same random weights (CreateRandom) and one
//     KvManager; prefills with window scores, then rounds of eviction (EvictOnDevice on one, the
//     host path PlanEviction + ApplyEviction + MoveKvs on the other) and decode steps: identical
//     counts (also through PlanFromBlockCounts), identical surviving K/V rows, scores and
//     positions in every head.
//   * a Llama-3-8B-shaped sequence (32 layers x 8 KV heads, head_dim 128, 6000 tokens, rate 8):
//     EvictOnDevice's wall time vs the host path (printed; informational), counts checked.
// KVC_GPU_TEST_SMALL=1 shrinks every case (compute-sanitizer runs).
#include "kernels/include/kvc/kernels/eviction.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_manager.h"
#include "tests/gpu/gpu_test_util.h"
#include "worker/cuda_executor.h"

namespace kvc {
namespace {

using gpu_test::Bf16;
using gpu_test::DeviceBuffer;
using gpu_test::PagedFixture;
using gpu_test::SmallCases;
using gpu_test::TestSeed;

uint32_t FloatBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// ---------------------------------------------------------------------------------------------
// Kernel level.

struct KernelCase {
  int32_t layers = 1, kv_heads = 1, head_dim = 64, block_size = 16;
  int64_t num_tokens = 0;
  int64_t evict_blocks = 0;
  EvictionConstraints cons;
  std::vector<int32_t> lengths;                 // per head
  std::vector<std::vector<int32_t>> positions;  // per head, per logical slot
  std::vector<std::vector<float>> scores;       // per head, per logical slot
  std::string Describe() const {
    int32_t max_n = 0;
    for (int32_t n : lengths) max_n = std::max(max_n, n);
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "L=%d H=%d d=%d b=%d tokens=%lld max_n=%d B=%lld P=%d S=%d m=%d", layers,
                  kv_heads, head_dim, block_size, static_cast<long long>(num_tokens), max_n,
                  static_cast<long long>(evict_blocks), cons.protected_window, cons.sink_tokens,
                  cons.min_kvs_per_head);
    return buf;
  }
};

// A random case; `large` allows heads of thousands of KVs (several histogram CTAs per head and
// many sweep chunks).
KernelCase RandomCase(std::mt19937& rng, bool large) {
  auto uni = [&](int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  KernelCase c;
  c.block_size = std::vector<int>{8, 16, 32}[uni(0, 2)];
  c.head_dim = uni(0, 1) ? 128 : 64;
  c.layers = static_cast<int32_t>(uni(1, large ? 3 : 4));
  c.kv_heads = static_cast<int32_t>(uni(1, large ? 3 : 4));
  const int32_t b = c.block_size;
  const int64_t max_tokens = large ? 5000 : (uni(0, 3) == 0 ? 40 : 400);
  c.num_tokens = uni(1, max_tokens);
  const int64_t t = c.num_tokens;
  // Constraints.
  switch (uni(0, 4)) {
    case 0:
      break;
    case 1:
      c.cons.protected_window = static_cast<int32_t>(uni(0, t / 2 + 1));
      break;
    case 2:
      c.cons.protected_window = static_cast<int32_t>(uni(0, 40));
      break;
    case 3:
      c.cons.protected_window = static_cast<int32_t>(t + uni(0, 3));
      break;  // nothing
    default:
      c.cons.protected_window = 32;
      break;
  }
  if (uni(0, 2) == 0) c.cons.sink_tokens = static_cast<int32_t>(uni(0, 16));
  if (uni(0, 2) == 0) c.cons.min_kvs_per_head = static_cast<int32_t>(uni(0, 3 * b));
  const int32_t keep = (c.cons.min_kvs_per_head + b - 1) / b * b;
  // Lengths.
  const int32_t heads = c.layers * c.kv_heads;
  for (int32_t h = 0; h < heads; ++h) {
    int64_t n = 0;
    switch (uni(0, 9)) {
      case 0:
        n = 0;
        break;
      case 1:
        n = 1;
        break;
      case 2:
        n = b + uni(-1, 1);
        break;
      case 3:
        n = t;
        break;
      case 4:
        n = uni(0, t / b + 1) * b + uni(-1, 1);
        break;
      case 5:
        n = keep + uni(-1, 1);
        break;
      default:
        n = uni(0, t);
        break;
    }
    c.lengths.push_back(static_cast<int32_t>(std::clamp<int64_t>(n, 0, t)));
  }
  // Positions: distinct (a random subset of [0, t) in random order) or with repeats.
  const bool repeats = uni(0, 4) == 0;
  std::vector<int32_t> all(t);
  std::iota(all.begin(), all.end(), 0);
  for (int32_t h = 0; h < heads; ++h) {
    const int32_t n = c.lengths[h];
    std::vector<int32_t> pos(n);
    if (repeats) {
      for (int32_t& p : pos) p = static_cast<int32_t>(uni(0, t - 1));
    } else {
      for (int32_t i = 0; i < n; ++i) std::swap(all[i], all[uni(i, t - 1)]);
      std::copy(all.begin(), all.begin() + n, pos.begin());
      if (uni(0, 1) == 0) std::sort(pos.begin(), pos.end());  // uncompressed heads are in order
    }
    c.positions.push_back(std::move(pos));
  }
  // Scores: continuous, few levels (ties), all equal, or small integers with -0/+0; a sprinkle
  // of NaN and +-inf in some cases.
  const int mode = static_cast<int>(uni(0, 3));
  const double special = uni(0, 2) == 0 ? 0.06 : 0.0;
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  const float levels[] = {-0.5f, 0.0f, 0.25f, 0.5f, 1.0f};
  for (int32_t h = 0; h < heads; ++h) {
    std::vector<float> s(c.lengths[h]);
    for (float& x : s) {
      switch (mode) {
        case 0:
          x = u01(rng) * 2.0f - 1.0f;
          break;
        case 1:
          x = levels[uni(0, 4)];
          break;
        case 2:
          x = uni(0, 1) ? 0.0f : -0.0f;
          break;
        default:
          x = static_cast<float>(uni(-2, 2));
          if (x == 0.0f && uni(0, 1)) x = -0.0f;
          break;
      }
      if (special > 0 && u01(rng) < special) {
        const int which = static_cast<int>(uni(0, 2));
        x = which == 0   ? std::numeric_limits<float>::quiet_NaN()
            : which == 1 ? std::numeric_limits<float>::infinity()
                         : -std::numeric_limits<float>::infinity();
      }
    }
    c.scores.push_back(std::move(s));
  }
  int64_t total_blocks = 0;
  for (int32_t n : c.lengths) total_blocks += (n + b - 1) / b;
  switch (uni(0, 5)) {
    case 0:
      c.evict_blocks = 0;
      break;
    case 1:
      c.evict_blocks = 1;
      break;
    case 2:
      c.evict_blocks = total_blocks + uni(0, 5);
      break;  // more than can be evicted
    default:
      c.evict_blocks = uni(1, std::max<int64_t>(1, total_blocks));
      break;
  }
  return c;
}

struct HostPool {
  std::vector<Bf16> k, v;
  std::vector<float> scores;
  std::vector<int32_t> positions;
};

// Runs one case on the device and against the CPU plan; returns false (after reporting) on a
// mismatch.
bool RunKernelCase(const KernelCase& c, std::mt19937& rng, int64_t* moves_checked) {
  const int32_t heads = c.layers * c.kv_heads;
  const int32_t b = c.block_size, d = c.head_dim;
  PagedFixture f;
  f.Build(1, heads, d, b, c.lengths, c.positions, rng);
  for (int32_t h = 0; h < heads; ++h) {
    for (int32_t i = 0; i < c.lengths[h]; ++i) f.scores[f.Slot(h, i)] = c.scores[h][i];
  }
  f.Upload();

  // CPU reference: the plan, then its moves on a host copy of the pool.
  KvLayout layout;
  layout.num_layers = c.layers;
  layout.num_kv_heads = c.kv_heads;
  layout.head_dim = d;
  layout.block_size = b;
  layout.num_blocks = f.num_blocks;
  SequenceBlockTables tables;
  tables.heads.resize(heads);
  for (int32_t h = 0; h < heads; ++h) {
    const int32_t nb = (c.lengths[h] + b - 1) / b;
    tables.heads[h].num_kvs = c.lengths[h];
    tables.heads[h].blocks.assign(f.block_ids.begin() + f.table_offsets[h],
                                  f.block_ids.begin() + f.table_offsets[h] + nb);
  }
  FlatKvSlotReader reader(f.scores, f.positions, b);
  EvictionPlanner planner;
  auto plan = planner.Plan(layout, tables, reader, c.num_tokens, c.evict_blocks, c.cons);
  EXPECT_TRUE(plan.ok()) << plan.status() << " " << c.Describe();
  if (!plan.ok()) return false;
  std::vector<int32_t> want_k(heads, 0);
  HostPool want{f.k, f.v, f.scores, f.positions};
  for (const HeadEviction& ev : plan->heads) {
    want_k[ev.head_index] = ev.blocks_freed;
    const int32_t n_keep = ev.num_kvs_before - ev.kvs_evicted;
    for (const KvMove& m : ev.moves) {
      // Compaction moves never overlap: every destination is a hole below n', every source a
      // survivor at or above it.
      EXPECT_LT(m.dst_slot, n_keep) << c.Describe();
      EXPECT_GE(m.src_slot, n_keep) << c.Describe();
      const int64_t src = static_cast<int64_t>(m.src_block) * b + m.src_offset;
      const int64_t dst = static_cast<int64_t>(m.dst_block) * b + m.dst_offset;
      std::copy_n(want.k.begin() + src * d, d, want.k.begin() + dst * d);
      std::copy_n(want.v.begin() + src * d, d, want.v.begin() + dst * d);
      want.scores[dst] = want.scores[src];
      want.positions[dst] = want.positions[src];
      ++*moves_checked;
    }
  }

  // Device.
  kernels::KvCompressParams p;
  p.cache = f.Cache();
  p.tables = f.Tables();
  p.num_tokens = c.num_tokens;
  p.evict_blocks = c.evict_blocks;
  p.protected_window = c.cons.protected_window;
  p.sink_tokens = c.cons.sink_tokens;
  p.min_kvs_per_head = c.cons.min_kvs_per_head;
  DeviceBuffer<int32_t> out(heads + 1);
  out.Poison();
  const int64_t ws_bytes = kernels::KvCompressWorkspaceBytes(heads, p.tables.max_num_kvs);
  DeviceBuffer<uint8_t> ws(static_cast<size_t>(std::max<int64_t>(ws_bytes, 1)));
  ws.Poison();  // the kernels must not rely on anything they did not clear
  p.out = out.get();
  p.workspace = ws.get();
  p.workspace_bytes = ws_bytes;
  const absl::Status st = kernels::KvCompressEvict(p, nullptr);
  EXPECT_TRUE(st.ok()) << st << " " << c.Describe();
  if (!st.ok()) return false;
  const std::vector<int32_t> got = out.Download();
  EXPECT_EQ(got[heads], 0) << "error bits; " << c.Describe();
  bool ok = got[heads] == 0;
  for (int32_t h = 0; h < heads; ++h) {
    if (got[h] != want_k[h]) {
      ADD_FAILURE() << "head " << h << " (n " << c.lengths[h] << ") freed " << got[h]
                    << " blocks, CPU plan " << want_k[h] << "; " << c.Describe();
      ok = false;
    }
  }
  if (!ok) return false;
  const std::vector<Bf16> gk = f.d_k.Download(), gv = f.d_v.Download();
  const std::vector<float> gs = f.d_scores.Download();
  const std::vector<int32_t> gp = f.d_positions.Download();
  for (int64_t slot = 0; slot < static_cast<int64_t>(gs.size()); ++slot) {
    const bool same_meta =
        FloatBits(gs[slot]) == FloatBits(want.scores[slot]) && gp[slot] == want.positions[slot];
    const bool same_rows =
        std::memcmp(gk.data() + slot * d, want.k.data() + slot * d, d * sizeof(Bf16)) == 0 &&
        std::memcmp(gv.data() + slot * d, want.v.data() + slot * d, d * sizeof(Bf16)) == 0;
    if (!same_meta || !same_rows) {
      ADD_FAILURE() << "physical slot " << slot << " (block " << slot / b << ") differs from the "
                    << "CPU plan applied to the pool: position " << gp[slot] << " vs "
                    << want.positions[slot] << ", score " << gs[slot] << " vs " << want.scores[slot]
                    << ", rows " << (same_rows ? "equal" : "differ") << "; " << c.Describe();
      return false;
    }
  }
  return true;
}

TEST(EvictionKernelTest, RandomCasesMatchTheCpuPlanAndItsMoves) {
  const uint32_t seed = TestSeed();
  std::printf("[ eviction ] seed %u (KVC_TEST_SEED=%u repeats it)\n", seed, seed);
  std::mt19937 rng(seed);
  const int num_small = SmallCases() ? 14 : 600;
  const int num_large = SmallCases() ? 2 : 30;
  int64_t moves = 0;
  int passed = 0, evicting = 0;
  for (int i = 0; i < num_small + num_large; ++i) {
    const KernelCase c = RandomCase(rng, /*large=*/i >= num_small);
    if (c.evict_blocks > 0) ++evicting;
    if (!RunKernelCase(c, rng, &moves)) {
      ADD_FAILURE() << "case " << i << " failed (seed " << seed << ")";
      break;
    }
    ++passed;
  }
  std::printf("[ eviction ] %d kernel cases equal the CPU plan (%d with B > 0), %lld moves\n",
              passed, evicting, static_cast<long long>(moves));
  EXPECT_EQ(passed, num_small + num_large);
  EXPECT_GT(moves, 0);
}

// Hand-made edge cases: one long head of equal scores (every radix pass ties; slots decide),
// everything pinned (NaN / +inf), and heads exactly at the minimum.
TEST(EvictionKernelTest, TiesPinnedAndMinimum) {
  std::mt19937 rng(TestSeed());
  const int32_t n_long = SmallCases() ? 300 : 4500;
  int64_t moves = 0;
  for (int variant = 0; variant < 3; ++variant) {
    KernelCase c;
    c.layers = 2;
    c.kv_heads = 2;
    c.block_size = 16;
    c.head_dim = 128;
    c.num_tokens = n_long;
    c.lengths = {n_long, n_long - 1, 33, 48};
    for (int32_t n : c.lengths) {
      std::vector<int32_t> pos(n);
      std::iota(pos.begin(), pos.end(), static_cast<int32_t>(c.num_tokens) - n);
      std::shuffle(pos.begin(), pos.end(), rng);
      std::vector<float> s(n, 0.5f);
      if (variant == 1) {
        for (int32_t i = 0; i < n; ++i) {
          s[i] = i % 2 ? std::numeric_limits<float>::quiet_NaN()
                       : std::numeric_limits<float>::infinity();
        }
        s[0] = 0.25f;  // a single evictable KV: only a head with r == 1 can give a block
      }
      c.positions.push_back(std::move(pos));
      c.scores.push_back(std::move(s));
    }
    if (variant == 2) c.cons.min_kvs_per_head = 48;
    c.evict_blocks = variant == 0 ? (n_long / 16) : 1000000;
    ASSERT_TRUE(RunKernelCase(c, rng, &moves)) << "variant " << variant;
  }
  EXPECT_GT(moves, 0);
}

TEST(EvictionKernelTest, BadParamsAreInvalidArgument) {
  DeviceBuffer<Bf16> k(64 * 16), v(64 * 16);
  DeviceBuffer<float> scores(16);
  DeviceBuffer<int32_t> positions(16), ids(1), offsets(1), counts(1), out(2);
  DeviceBuffer<uint8_t> ws(static_cast<size_t>(kernels::KvCompressWorkspaceBytes(1, 16)));
  kernels::KvCompressParams p;
  p.cache.k = k.get();
  p.cache.v = v.get();
  p.cache.scores = scores.get();
  p.cache.positions = positions.get();
  p.cache.num_blocks = 1;
  p.cache.block_size = 16;
  p.cache.head_dim = 64;
  p.tables.block_ids = ids.get();
  p.tables.table_offsets = offsets.get();
  p.tables.num_kvs = counts.get();
  p.tables.num_seqs = 1;
  p.tables.num_kv_heads = 1;
  p.tables.max_num_kvs = 16;
  p.num_tokens = 16;
  p.evict_blocks = 1;
  p.out = out.get();
  p.workspace = ws.get();
  p.workspace_bytes = kernels::KvCompressWorkspaceBytes(1, 16);
  auto expect_invalid = [&](kernels::KvCompressParams q, const char* field) {
    const absl::Status st = kernels::KvCompressEvict(q, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field << ": " << st;
    EXPECT_NE(std::string(st.message()).find(field), std::string::npos) << st;
  };
  kernels::KvCompressParams q = p;
  q.tables.num_seqs = 2;
  expect_invalid(q, "num_seqs");
  q = p;
  q.evict_blocks = -1;
  expect_invalid(q, "evict_blocks");
  q = p;
  q.workspace_bytes = 8;
  expect_invalid(q, "workspace_bytes");
  q = p;
  q.cache.head_dim = 12;
  expect_invalid(q, "head_dim");
  q = p;
  q.sink_tokens = -1;
  expect_invalid(q, "sink_tokens");
  q = p;
  q.out = nullptr;
  expect_invalid(q, "out");
  EXPECT_GT(kernels::KvCompressWorkspaceBytes(256, 6000),
            kernels::KvCompressWorkspaceBytes(256, 600));
}

// ---------------------------------------------------------------------------------------------
// Executor level.

ModelConfig RandomConfig(int32_t layers, int32_t q_heads, int32_t kv_heads, int32_t head_dim) {
  ModelConfig c;
  c.name = "random-evict";
  c.family = ModelFamily::kLlama;
  c.hidden_size = 256;
  c.intermediate_size = 256;
  c.num_hidden_layers = layers;
  c.num_attention_heads = q_heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.vocab_size = 512;
  c.max_position_embeddings = 16384;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5f;
  return c;
}

std::vector<int32_t> RandomTokens(int32_t n, int32_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = tok(rng);
  return t;
}

// Everything a head holds in its live slots [0, num_kvs), read through the executor.
struct HeadContents {
  std::vector<float> scores;
  std::vector<int32_t> positions;
  std::vector<std::vector<float>> k, v;
};

HeadContents ReadHead(const CudaExecutor& e, const HeadBlockTable& head, int32_t b, bool rows) {
  HeadContents out;
  out.scores.resize(head.num_kvs);
  out.positions.resize(head.num_kvs);
  for (size_t bi = 0; bi < head.blocks.size(); ++bi) {
    const int32_t first = static_cast<int32_t>(bi) * b;
    const int32_t count = std::min(b, head.num_kvs - first);
    e.slot_reader().ReadBlock(head.blocks[bi], count, out.scores.data() + first,
                              out.positions.data() + first);
    if (!rows) continue;
    for (int32_t o = 0; o < count; ++o) {
      auto kr = e.ReadKvRow(head.blocks[bi], o, false);
      auto vr = e.ReadKvRow(head.blocks[bi], o, true);
      KVC_CHECK(kr.ok() && vr.ok());
      out.k.push_back(std::move(*kr));
      out.v.push_back(std::move(*vr));
    }
  }
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (FloatBits(a[i]) != FloatBits(b[i])) return false;
  }
  return true;
}

struct ExecutorCase {
  int32_t layers, q_heads, kv_heads, head_dim, block_size;
  std::vector<int32_t> prompt_lengths;
};

TEST(EvictOnDeviceTest, EqualsTheHostPlanAndMoves) {
  const uint32_t seed = TestSeed();
  std::mt19937 rng(seed);
  std::vector<ExecutorCase> cases = {{2, 4, 2, 64, 16, {70, 33}}};
  if (!SmallCases()) {
    cases = {{2, 4, 2, 64, 16, {300, 77, 513}},
             {3, 8, 1, 128, 32, {400, 129}},
             {2, 2, 2, 128, 8, {250, 96, 31}}};
  }
  int64_t compared_heads = 0, blocks_freed = 0;
  for (const ExecutorCase& ec : cases) {
    const ModelConfig config = RandomConfig(ec.layers, ec.q_heads, ec.kv_heads, ec.head_dim);
    ASSERT_TRUE(config.Validate().ok()) << config.Validate();
    const int64_t num_blocks = 4096;
    auto dev_or = CudaExecutor::CreateRandom(config, seed, num_blocks, ec.block_size);
    auto host_or = CudaExecutor::CreateRandom(config, seed, num_blocks, ec.block_size);
    ASSERT_TRUE(dev_or.ok()) << dev_or.status();
    ASSERT_TRUE(host_or.ok()) << host_or.status();
    std::unique_ptr<CudaExecutor> dev = std::move(*dev_or), host = std::move(*host_or);
    ASSERT_TRUE(dev->evicts_on_device());
    KvManagerOptions ko;
    ko.layout = dev->layout();
    KvManager kv(ko);
    const KvLayout& layout = kv.layout();
    const int32_t b = layout.block_size;

    struct Seq {
      int64_t id;
      std::vector<int32_t> tokens;
    };
    std::vector<Seq> seqs;
    for (size_t i = 0; i < ec.prompt_lengths.size(); ++i) {
      seqs.push_back({static_cast<int64_t>(i + 1),
                      RandomTokens(ec.prompt_lengths[i], config.vocab_size, rng)});
      ASSERT_TRUE(kv.AddSequence(seqs.back().id).ok());
      ASSERT_TRUE(kv.Append(seqs.back().id, ec.prompt_lengths[i]).ok());
    }
    auto forward_both = [&](bool prefill) {
      ForwardBatch batch;
      batch.score_pool_kernel = 7;
      for (Seq& s : seqs) {
        ForwardSequence f;
        f.seq_id = s.id;
        f.tables = kv.Tables(s.id);
        if (prefill) {
          f.tokens = s.tokens;
          f.score_queries = 32;
          f.score_pool = true;
        } else {
          f.tokens = std::span<const int32_t>(s.tokens).subspan(s.tokens.size() - 1, 1);
          f.start_position = static_cast<int32_t>(s.tokens.size()) - 1;
          f.score_queries = 1;
        }
        batch.seqs.push_back(f);
      }
      ForwardOutput o1, o2;
      ASSERT_TRUE(dev->Forward(batch, &o1).ok());
      ASSERT_TRUE(host->Forward(batch, &o2).ok());
    };
    forward_both(true);
    if (::testing::Test::HasFatalFailure()) return;

    EvictionPlanner planner;
    const int rounds = SmallCases() ? 2 : 4;
    for (int round = 0; round < rounds; ++round) {
      for (Seq& s : seqs) {
        const SequenceBlockTables before = *kv.Tables(s.id);
        int64_t held = 0;
        for (const HeadBlockTable& h : before.heads) held += h.blocks.size();
        // Both executors hold the same scores (same weights, same inputs, deterministic).
        for (int32_t hi = 0; hi < layout.heads_per_seq(); ++hi) {
          const HeadContents a = ReadHead(*dev, before.heads[hi], b, false);
          const HeadContents c = ReadHead(*host, before.heads[hi], b, false);
          ASSERT_TRUE(SameBits(a.scores, c.scores) && a.positions == c.positions)
              << "executors diverged before eviction: seq " << s.id << " head " << hi;
        }
        EvictionConstraints cons;
        cons.protected_window = std::vector<int32_t>{32, 16, 0, 8}[round];
        cons.sink_tokens = std::vector<int32_t>{0, 4, 1, 0}[round];
        cons.min_kvs_per_head = std::vector<int32_t>{0, b, 0, 3 * b}[round];
        const int64_t want = std::vector<int64_t>{held / 3, held / 5 + 1, held, held / 2}[round];
        const int64_t num_tokens = static_cast<int64_t>(s.tokens.size());

        auto counts = dev->EvictOnDevice(before, num_tokens, want, cons);
        ASSERT_TRUE(counts.ok()) << counts.status();
        auto plan = kv.PlanEviction(s.id, host->slot_reader(), want, cons, &planner);
        ASSERT_TRUE(plan.ok()) << plan.status();
        std::vector<int32_t> want_k(layout.heads_per_seq(), 0);
        for (const HeadEviction& ev : plan->heads) want_k[ev.head_index] = ev.blocks_freed;
        ASSERT_EQ(*counts, want_k) << "seq " << s.id << " round " << round << " B " << want;
        auto counts_plan = PlanFromBlockCounts(layout, before, *counts);
        ASSERT_TRUE(counts_plan.ok()) << counts_plan.status();
        ASSERT_EQ(counts_plan->heads.size(), plan->heads.size());
        for (size_t i = 0; i < plan->heads.size(); ++i) {
          EXPECT_EQ(counts_plan->heads[i].head_index, plan->heads[i].head_index);
          EXPECT_EQ(counts_plan->heads[i].kvs_evicted, plan->heads[i].kvs_evicted);
          EXPECT_EQ(counts_plan->heads[i].freed_blocks, plan->heads[i].freed_blocks);
        }
        blocks_freed += plan->blocks_freed;
        std::vector<KvMove> moves;
        ASSERT_TRUE(kv.ApplyEviction(s.id, *plan, CompressionTrigger::kPrefill, &moves).ok());
        ASSERT_TRUE(host->MoveKvs(moves).ok());

        const SequenceBlockTables* after = kv.Tables(s.id);
        for (int32_t hi = 0; hi < layout.heads_per_seq(); ++hi) {
          const HeadContents a = ReadHead(*dev, after->heads[hi], b, true);
          const HeadContents c = ReadHead(*host, after->heads[hi], b, true);
          ASSERT_TRUE(SameBits(a.scores, c.scores)) << "seq " << s.id << " head " << hi;
          ASSERT_EQ(a.positions, c.positions) << "seq " << s.id << " head " << hi;
          ASSERT_EQ(a.k, c.k) << "seq " << s.id << " head " << hi;
          ASSERT_EQ(a.v, c.v) << "seq " << s.id << " head " << hi;
          ++compared_heads;
        }
      }
      // A few decode steps (decode scores accumulate) before the next round.
      for (int step = 0; step < 3; ++step) {
        for (Seq& s : seqs) {
          s.tokens.push_back(static_cast<int32_t>(rng() % config.vocab_size));
          ASSERT_TRUE(kv.Append(s.id, 1).ok());
        }
        forward_both(false);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
    ASSERT_TRUE(kv.CheckInvariants().ok());
  }
  std::printf(
      "[ eviction ] executor level: %lld heads compared after eviction, %lld blocks freed\n",
      static_cast<long long>(compared_heads), static_cast<long long>(blocks_freed));
  EXPECT_GT(blocks_freed, 0);
}

TEST(EvictOnDeviceTest, BadInputReturnsStatus) {
  auto e = CudaExecutor::CreateRandom(RandomConfig(1, 2, 1, 64), 1, 64, 16);
  ASSERT_TRUE(e.ok()) << e.status();
  SequenceBlockTables t;
  t.heads.resize(1);
  t.heads[0].num_kvs = 20;
  t.heads[0].blocks = {3, 4};
  EXPECT_EQ((*e)->EvictOnDevice(t, 20, -1, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->EvictOnDevice(t, 10, 1, {}).status().code(),  // more KVs than tokens
            absl::StatusCode::kInvalidArgument);
  t.heads[0].blocks = {3};
  EXPECT_EQ((*e)->EvictOnDevice(t, 20, 1, {}).status().code(),  // 20 KVs in one block
            absl::StatusCode::kInvalidArgument);
  t.heads[0].blocks = {3, 64};
  EXPECT_EQ((*e)->EvictOnDevice(t, 20, 1, {}).status().code(),  // block id out of range
            absl::StatusCode::kInvalidArgument);
  t.heads.resize(2);
  EXPECT_EQ((*e)->EvictOnDevice(t, 20, 1, {}).status().code(),  // wrong head count
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Llama-3-8B-shaped timing (informational): 32 layers x 8 KV heads, head_dim 128, 6000-token
// prompts, rate 8, protected window 32. Sequence 1 takes the host path (PlanEviction over the
// device slot reader, ApplyEviction, MoveKvs), sequences 2 and 3 EvictOnDevice (the first call
// grows the buffers). Counts are checked against the host plan made just before each device call,
// and the survivors of a few heads against the plan's moves applied to a host copy.
TEST(EvictOnDeviceTest, LlamaShapedTiming) {
  const bool small = SmallCases();
  const int32_t layers = small ? 2 : 32, tokens = small ? 300 : 6000, block_size = 16;
  const ModelConfig config = RandomConfig(layers, 8, 8, 128);
  const int64_t per_seq =
      static_cast<int64_t>(layers) * 8 * ((tokens + block_size - 1) / block_size);
  auto e_or = CudaExecutor::CreateRandom(config, 7, 3 * per_seq + 64, block_size);
  ASSERT_TRUE(e_or.ok()) << e_or.status();
  std::unique_ptr<CudaExecutor> e = std::move(*e_or);
  KvManagerOptions ko;
  ko.layout = e->layout();
  KvManager kv(ko);
  const KvLayout& layout = kv.layout();
  std::mt19937 rng(TestSeed());
  std::vector<std::vector<int32_t>> prompts;
  ForwardBatch batch;
  batch.score_pool_kernel = 7;
  for (int64_t id = 1; id <= 3; ++id) {
    prompts.push_back(RandomTokens(tokens, config.vocab_size, rng));
    ASSERT_TRUE(kv.AddSequence(id).ok());
    ASSERT_TRUE(kv.Append(id, tokens).ok());
  }
  for (int64_t id = 1; id <= 3; ++id) {
    ForwardSequence f;
    f.seq_id = id;
    f.tables = kv.Tables(id);
    f.tokens = prompts[id - 1];
    f.score_queries = 32;
    f.score_pool = true;
    batch.seqs.push_back(f);
  }
  ForwardOutput out;
  ASSERT_TRUE(e->Forward(batch, &out).ok());

  CompressionSettings settings;
  settings.mode = BudgetMode::kRate;
  settings.compression_rate = 8.0;
  settings.constraints.protected_window = 32;
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration dt) {
    return std::chrono::duration<double, std::milli>(dt).count();
  };
  EvictionPlanner planner;

  // Host path, sequence 1.
  auto evict1 = kv.EvictBlocksForBudget(1, settings);
  ASSERT_TRUE(evict1.ok()) << evict1.status();
  ASSERT_GT(*evict1, 0);
  const auto h0 = Clock::now();
  auto plan1 = kv.PlanEviction(1, e->slot_reader(), *evict1, settings.constraints, &planner);
  ASSERT_TRUE(plan1.ok()) << plan1.status();
  const auto h1 = Clock::now();
  std::vector<KvMove> moves;
  ASSERT_TRUE(kv.ApplyEviction(1, *plan1, CompressionTrigger::kPrefill, &moves).ok());
  ASSERT_TRUE(e->MoveKvs(moves).ok());
  const auto h2 = Clock::now();
  EXPECT_EQ(plan1->blocks_freed, *evict1);

  double device_ms[2] = {0, 0};
  for (int64_t id = 2; id <= 3; ++id) {
    auto evict = kv.EvictBlocksForBudget(id, settings);
    ASSERT_TRUE(evict.ok());
    const SequenceBlockTables before = *kv.Tables(id);
    auto plan = kv.PlanEviction(id, e->slot_reader(), *evict, settings.constraints, &planner);
    ASSERT_TRUE(plan.ok());
    // Expected survivors of the first heads: read them, apply the plan's moves on the host.
    const int32_t check_heads = 4;
    std::vector<HeadContents> expect;
    for (int32_t hi = 0; hi < check_heads; ++hi) {
      expect.push_back(ReadHead(*e, before.heads[hi], block_size, false));
    }
    for (const HeadEviction& ev : plan->heads) {
      if (ev.head_index >= check_heads) break;
      HeadContents& x = expect[ev.head_index];
      for (const KvMove& m : ev.moves) {
        x.scores[m.dst_slot] = x.scores[m.src_slot];
        x.positions[m.dst_slot] = x.positions[m.src_slot];
      }
      x.scores.resize(ev.num_kvs_before - ev.kvs_evicted);
      x.positions.resize(ev.num_kvs_before - ev.kvs_evicted);
    }
    const auto d0 = Clock::now();
    auto counts = e->EvictOnDevice(before, tokens, *evict, settings.constraints);
    const auto d1 = Clock::now();
    ASSERT_TRUE(counts.ok()) << counts.status();
    device_ms[id - 2] = ms(d1 - d0);
    std::vector<int32_t> want_k(layout.heads_per_seq(), 0);
    for (const HeadEviction& ev : plan->heads) want_k[ev.head_index] = ev.blocks_freed;
    ASSERT_EQ(*counts, want_k) << "seq " << id;
    auto applied = PlanFromBlockCounts(layout, before, *counts);
    ASSERT_TRUE(applied.ok());
    ASSERT_TRUE(kv.ApplyEviction(id, *applied, CompressionTrigger::kPrefill, nullptr).ok());
    for (int32_t hi = 0; hi < check_heads; ++hi) {
      const HeadContents got = ReadHead(*e, kv.Tables(id)->heads[hi], block_size, false);
      ASSERT_TRUE(SameBits(got.scores, expect[hi].scores)) << "seq " << id << " head " << hi;
      ASSERT_EQ(got.positions, expect[hi].positions) << "seq " << id << " head " << hi;
    }
  }
  std::printf(
      "[ eviction timing ] %d layers x 8 KV heads, head_dim 128, %d tokens, b %d, rate 8, "
      "P 32: %lld of %lld blocks freed, %lld KVs evicted, %lld moves per sequence (seq 1)\n"
      "[ eviction timing ] host path: plan %.2f ms + apply/MoveKvs %.2f ms = %.2f ms; "
      "EvictOnDevice: %.3f ms (first call, buffers grown), %.3f ms (second call)\n",
      layers, tokens, block_size, static_cast<long long>(plan1->blocks_freed),
      static_cast<long long>(per_seq), static_cast<long long>(plan1->kvs_evicted),
      static_cast<long long>(plan1->num_moves), ms(h1 - h0), ms(h2 - h1), ms(h2 - h0), device_ms[0],
      device_ms[1]);
  ASSERT_TRUE(kv.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvc
