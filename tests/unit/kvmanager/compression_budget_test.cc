#include "kvmanager/compression_budget.h"

#include <cmath>
#include <string>

#include "gtest/gtest.h"

namespace kvc {
namespace {

KvLayout Layout(int32_t layers, int32_t heads, int32_t b) {
  KvLayout layout;
  layout.num_layers = layers;
  layout.num_kv_heads = heads;
  layout.head_dim = 64;
  layout.block_size = b;
  layout.num_blocks = 1000;
  return layout;
}

TEST(CompressionBudgetTest, TriggerNames) {
  EXPECT_EQ(CompressionTriggerName(CompressionTrigger::kPrefill), "prefill");
  EXPECT_EQ(CompressionTriggerName(CompressionTrigger::kMemoryPressure), "memory_pressure");
  EXPECT_EQ(CompressionTriggerName(CompressionTrigger::kInterval), "interval");
  EXPECT_EQ(CompressionTriggerName(CompressionTrigger::kContinual), "continual");
}

TEST(CompressionBudgetTest, MaxCacheTokensRoundsUpToWholeBlocksPerHead) {
  const KvLayout layout = Layout(2, 2, 16);
  // ceil(100 / 16) = 7 blocks per head on average, 28 for the sequence.
  EXPECT_EQ(EvictBlocksForMaxCacheTokens(layout, 40, 100), 12);
  EXPECT_EQ(EvictBlocksForMaxCacheTokens(layout, 28, 100), 0);
  EXPECT_EQ(EvictBlocksForMaxCacheTokens(layout, 20, 100), 0);
  EXPECT_EQ(EvictBlocksForMaxCacheTokens(layout, 40, 112), 12);
  EXPECT_EQ(EvictBlocksForMaxCacheTokens(layout, 40, 113), 8);
  for (int64_t held = 0; held < 200; ++held) {
    for (int64_t c = 16; c < 300; c += 7) {
      const int64_t evict = EvictBlocksForMaxCacheTokens(layout, held, c);
      ASSERT_GE(evict, 0);
      // After evicting, the sequence is within C KVs per head (rounded up to blocks), and no
      // more was asked than needed.
      ASSERT_LE((held - evict) * 16, (c + 15) / 16 * 16 * 4);
      if (evict > 0) {
        ASSERT_GT((held - evict + 1) * 16, (c + 15) / 16 * 16 * 4);
      }
    }
  }
}

TEST(CompressionBudgetTest, RateTargetsKeepTheProtectedTailWhole) {
  const KvLayout layout = Layout(2, 2, 16);  // L·H = 4
  // P = 20 rounds to P' = 32; target = ceil(968 * 4 / 8) + 32 * 4 = 484 + 128.
  EXPECT_EQ(TargetKvsForRate(layout, 1000, 8.0, 20), 612);
  EXPECT_EQ(EvictBlocksForRate(layout, 1000, 4000, 8.0, 20), 212);  // ceil(3388 / 16)
  // Rate 1 keeps everything: an uncompressed sequence evicts nothing.
  EXPECT_EQ(TargetKvsForRate(layout, 1000, 1.0, 20), 4000);
  EXPECT_EQ(EvictBlocksForRate(layout, 1000, 4000, 1.0, 20), 0);
  // Shorter than the rounded window: nothing to compress.
  EXPECT_EQ(TargetKvsForRate(layout, 30, 8.0, 20), 120);
  EXPECT_EQ(EvictBlocksForRate(layout, 30, 120, 8.0, 20), 0);
  // No window: ceil(1000 * 4 / 3).
  EXPECT_EQ(TargetKvsForRate(layout, 1000, 3.0, 0), 1334);
  // Already below target.
  EXPECT_EQ(EvictBlocksForRate(layout, 1000, 600, 8.0, 20), 0);
}

TEST(CompressionBudgetTest, DispatchOnMode) {
  const KvLayout layout = Layout(1, 2, 4);
  CompressionSettings s;
  EXPECT_EQ(EvictBlocksForBudget(s, layout, 100, 50, 200), 0);  // kNone
  s.mode = BudgetMode::kMaxCacheTokens;
  s.max_cache_tokens = 8;  // 2 blocks per head -> 4
  EXPECT_EQ(EvictBlocksForBudget(s, layout, 100, 50, 200), 46);
  s.mode = BudgetMode::kRate;
  s.compression_rate = 4;
  s.constraints.protected_window = 4;
  // target = ceil(96 * 2 / 4) + 4 * 2 = 56; evict ceil((200 - 56) / 4) = 36.
  EXPECT_EQ(EvictBlocksForBudget(s, layout, 100, 50, 200), 36);
}

TEST(CompressionBudgetTest, ResolveAppliesServerDefaultsAndOverrides) {
  const KvLayout layout = Layout(2, 2, 16);
  CompressionSettings server;
  server.mode = BudgetMode::kRate;
  server.compression_rate = 4;
  server.constraints = {64, 4, 32};

  auto s = ResolveCompressionSettings(server, {}, layout);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->mode, BudgetMode::kRate);
  EXPECT_EQ(s->compression_rate, 4);
  EXPECT_EQ(s->constraints.protected_window, 64);
  EXPECT_EQ(s->constraints.sink_tokens, 4);
  EXPECT_EQ(s->constraints.min_kvs_per_head, 32);

  CompressionOverrides req;
  req.max_cache_tokens = 256;
  req.protected_window = 8;
  s = ResolveCompressionSettings(server, req, layout);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->mode, BudgetMode::kMaxCacheTokens);
  EXPECT_EQ(s->max_cache_tokens, 256);
  EXPECT_EQ(s->constraints.protected_window, 8);
  EXPECT_EQ(s->constraints.sink_tokens, 4);

  req = {};
  req.compression_rate = 2;
  req.sink_tokens = 0;
  req.min_kvs_per_head = 0;
  s = ResolveCompressionSettings(server, req, layout);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->mode, BudgetMode::kRate);
  EXPECT_EQ(s->compression_rate, 2);
  EXPECT_EQ(s->constraints.sink_tokens, 0);
  EXPECT_EQ(s->constraints.min_kvs_per_head, 0);

  auto field_error = [&](const CompressionOverrides& o) {
    auto r = ResolveCompressionSettings(server, o, layout);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  req = {};
  req.compression_rate = 2;
  req.max_cache_tokens = 100;
  EXPECT_NE(field_error(req).find("at most one"), std::string::npos);
  req = {};
  req.compression_rate = 0.5;
  EXPECT_NE(field_error(req).find("compression_rate"), std::string::npos);
  req.compression_rate = std::nan("");
  EXPECT_NE(field_error(req).find("compression_rate"), std::string::npos);
  req = {};
  req.max_cache_tokens = 15;
  EXPECT_NE(field_error(req).find("max_cache_tokens"), std::string::npos);
  req = {};
  req.protected_window = -1;
  EXPECT_NE(field_error(req).find("protected_window"), std::string::npos);
  req = {};
  req.sink_tokens = -1;
  EXPECT_NE(field_error(req).find("sink_tokens"), std::string::npos);
  req = {};
  req.min_kvs_per_head = -5;
  EXPECT_NE(field_error(req).find("min_kvs_per_head"), std::string::npos);
}

}  // namespace
}  // namespace kvc
