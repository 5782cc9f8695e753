#include "kvmanager/kv_manager.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "common/check.h"
#include "gtest/gtest.h"

namespace kvc {
namespace {

KvManagerOptions Options(int32_t layers, int32_t heads, int32_t block_size, int64_t blocks) {
  KvManagerOptions options;
  options.layout.num_layers = layers;
  options.layout.num_kv_heads = heads;
  options.layout.head_dim = 64;
  options.layout.block_size = block_size;
  options.layout.num_blocks = blocks;
  return options;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

TEST(KvManagerOptionsTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(Options(2, 2, 16, 10).Validate().ok());
  auto bad = Options(0, 2, 16, 10).Validate();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("num_layers"), std::string::npos);
  EXPECT_NE(Options(2, 0, 16, 10).Validate().message().find("num_kv_heads"), std::string::npos);
  EXPECT_NE(Options(2, 2, 0, 10).Validate().message().find("block_size"), std::string::npos);
  EXPECT_NE(Options(2, 2, 16, 0).Validate().message().find("num_blocks"), std::string::npos);
  EXPECT_NE(Options(2, 2, 16, int64_t{1} << 32).Validate().message().find("num_blocks"),
            std::string::npos);
  auto opts = Options(2, 2, 16, 10);
  opts.layout.head_dim = -1;
  EXPECT_NE(opts.Validate().message().find("head_dim"), std::string::npos);
  EXPECT_EQ(KvManager::Create(Options(2, 2, 16, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(KvManager::Create(Options(2, 2, 16, 1)).ok());
}

TEST(KvManagerTest, AddAppendFreeLifecycle) {
  KvManager kv(Options(2, 3, 4, 100));
  EXPECT_EQ(kv.num_total_blocks(), 100);
  ASSERT_TRUE(kv.AddSequence(7).ok());
  EXPECT_EQ(kv.AddSequence(7).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(kv.BlocksNeededToAppend(7, 5), 6 * 2);
  EXPECT_EQ(kv.BlocksNeededToAppend(8, 5), -1);
  EXPECT_EQ(kv.BlocksNeededToAppend(7, -1), -1);
  EXPECT_EQ(kv.BlocksForNewSequence(5), 12);
  EXPECT_EQ(kv.BlocksForNewSequence(0), 0);
  ASSERT_TRUE(kv.Append(7, 5).ok());
  EXPECT_EQ(kv.num_free_blocks(), 88);
  const SequenceBlockTables* tables = kv.Tables(7);
  ASSERT_NE(tables, nullptr);
  ASSERT_EQ(tables->heads.size(), 6u);
  for (const HeadBlockTable& head : tables->heads) {
    EXPECT_EQ(head.num_kvs, 5);
    EXPECT_EQ(head.blocks.size(), 2u);
  }
  // 5 -> 8 stays within two blocks; 8 -> 9 crosses into a third in every head.
  EXPECT_EQ(kv.BlocksNeededToAppend(7, 3), 0);
  ASSERT_TRUE(kv.Append(7, 3).ok());
  EXPECT_EQ(kv.num_free_blocks(), 88);
  EXPECT_EQ(kv.BlocksNeededToAppend(7, 1), 6);
  ASSERT_TRUE(kv.Append(7, 0).ok());
  EXPECT_EQ(kv.Append(7, -2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv.Append(99, 1).code(), absl::StatusCode::kNotFound);
  auto usage = kv.Usage(7);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->tokens, 8);
  EXPECT_EQ(usage->kvs_held, 48);
  EXPECT_EQ(usage->kvs_uncompressed, 48);
  EXPECT_EQ(usage->blocks, 12);
  EXPECT_TRUE(kv.CheckInvariants().ok());
  EXPECT_EQ(kv.SequenceIds(), std::vector<int64_t>{7});
  ASSERT_TRUE(kv.FreeSequence(7).ok());
  EXPECT_EQ(kv.FreeSequence(7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kv.Tables(7), nullptr);
  EXPECT_FALSE(kv.HasSequence(7));
  EXPECT_EQ(kv.Usage(7).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kv.num_free_blocks(), 100);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

TEST(KvManagerTest, AppendIsAllOrNothingOnExhaustion) {
  KvManager kv(Options(2, 2, 4, 10));
  ASSERT_TRUE(kv.AddSequence(1).ok());
  ASSERT_TRUE(kv.Append(1, 8).ok());  // 4 heads * 2 blocks
  EXPECT_EQ(kv.num_free_blocks(), 2);
  const SequenceBlockTables before = *kv.Tables(1);
  // Needs 4 blocks, 2 free: nothing may change, not even partially.
  absl::Status status = kv.Append(1, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_NE(status.message().find("sequence 1"), std::string::npos) << status;
  EXPECT_EQ(kv.num_free_blocks(), 2);
  const SequenceBlockTables& after = *kv.Tables(1);
  for (size_t h = 0; h < before.heads.size(); ++h) {
    EXPECT_EQ(after.heads[h].blocks, before.heads[h].blocks);
    EXPECT_EQ(after.heads[h].num_kvs, before.heads[h].num_kvs);
  }
  EXPECT_EQ(kv.Usage(1)->tokens, 8);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

TEST(KvManagerTest, StatsArithmetic) {
  // L=2, H=2 (4 heads), b=4, 40 blocks => total tokens 40*4/4 = 40.
  KvManager kv(Options(2, 2, 4, 40));
  KvStats empty = kv.Stats(false);
  EXPECT_EQ(empty.capacity.total_blocks, 40);
  EXPECT_EQ(empty.capacity.free_blocks, 40);
  EXPECT_EQ(empty.capacity.block_size, 4);
  EXPECT_EQ(empty.capacity.total_tokens, 40);
  EXPECT_EQ(empty.capacity.physical_free_tokens, 40);
  EXPECT_DOUBLE_EQ(empty.capacity.compression_ratio, 1.0);
  EXPECT_EQ(empty.capacity.effective_free_tokens, 40);
  EXPECT_EQ(empty.capacity.sequences, 0);
  EXPECT_EQ(empty.kvs_held, 0);
  ASSERT_EQ(empty.layers.size(), 2u);
  EXPECT_TRUE(empty.layers[0].head_kvs.empty());

  ASSERT_TRUE(kv.AddSequence(1).ok());
  ASSERT_TRUE(kv.Append(1, 5).ok());  // 4 heads * 2 blocks = 8 blocks, 20 KVs
  ASSERT_TRUE(kv.AddSequence(2).ok());
  ASSERT_TRUE(kv.Append(2, 2).ok());  // 4 blocks, 8 KVs
  kv.RecordPreemption();
  kv.RecordPreemption();
  KvStats s = kv.Stats(true);
  EXPECT_EQ(s.num_layers, 2);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.capacity.free_blocks, 28);
  EXPECT_EQ(s.used_blocks, 12);
  EXPECT_EQ(s.capacity.physical_free_tokens, 28);  // 28 * 4 / 4
  EXPECT_EQ(s.kvs_held, 28);
  EXPECT_EQ(s.kvs_uncompressed, 28);
  EXPECT_DOUBLE_EQ(s.capacity.compression_ratio, 1.0);
  EXPECT_EQ(s.capacity.sequences, 2);
  EXPECT_EQ(s.preemptions_total, 2);
  ASSERT_EQ(s.layers.size(), 2u);
  for (const LayerOccupancy& layer : s.layers) {
    EXPECT_EQ(layer.blocks, 6);
    EXPECT_EQ(layer.kvs, 14);
    EXPECT_EQ(layer.head_kvs, (std::vector<int64_t>{7, 7}));
  }
  EXPECT_EQ(s.layers[1].layer, 1);
  KvCapacityStats cap = kv.Capacity();
  EXPECT_EQ(cap.free_blocks, s.capacity.free_blocks);
  EXPECT_EQ(cap.effective_free_tokens, s.capacity.effective_free_tokens);

  ASSERT_TRUE(kv.FreeSequence(1).ok());
  s = kv.Stats(false);
  EXPECT_EQ(s.kvs_held, 8);
  EXPECT_EQ(s.capacity.free_blocks, 36);
  EXPECT_EQ(s.layers[0].blocks, 2);
  EXPECT_EQ(s.layers[0].kvs, 4);
  EXPECT_EQ(s.capacity.sequences, 1);
}

TEST(KvManagerTest, PhysicalFreeTokensRoundDown) {
  // L=3, H=1, b=2, 7 blocks: 7*2/3 = 4 tokens (rounded down).
  KvManager kv(Options(3, 1, 2, 7));
  EXPECT_EQ(kv.Capacity().physical_free_tokens, 4);
  EXPECT_EQ(kv.Capacity().total_tokens, 4);
}

// Randomized model check: a shadow map of sequence lengths predicts every outcome.
TEST(KvManagerTest, RandomOperationsKeepInvariants) {
  std::mt19937 rng(12345);
  int64_t appended = 0, exhausted = 0;
  for (int config = 0; config < 12; ++config) {
    const int32_t layers = 1 + rng() % 3;
    const int32_t heads = 1 + rng() % 3;
    const int32_t block_sizes[] = {1, 2, 8, 16};
    const int32_t b = block_sizes[rng() % 4];
    const int64_t blocks = 1 + rng() % 200;
    KvManager kv(Options(layers, heads, b, blocks));
    const int64_t lh = int64_t{layers} * heads;
    std::map<int64_t, int64_t> shadow;  // seq -> tokens
    int64_t next_id = 0;
    for (int step = 0; step < 1500; ++step) {
      const int op = rng() % 10;
      if (op < 2) {
        const int64_t id = (rng() % 4 == 0 && !shadow.empty()) ? shadow.begin()->first : next_id++;
        const bool exists = shadow.count(id) > 0;
        absl::Status st = kv.AddSequence(id);
        ASSERT_EQ(st.ok(), !exists) << st;
        if (!exists) shadow[id] = 0;
      } else if (op < 8 && !shadow.empty()) {
        auto it = shadow.begin();
        std::advance(it, rng() % shadow.size());
        const int32_t n = rng() % 3 == 0 ? rng() % (3 * b + 2) : rng() % 2;
        const int64_t need = lh * (CeilDiv(it->second + n, b) - CeilDiv(it->second, b));
        ASSERT_EQ(kv.BlocksNeededToAppend(it->first, n), need);
        const int64_t free_before = kv.num_free_blocks();
        absl::Status st = kv.Append(it->first, n);
        if (need <= free_before) {
          ASSERT_TRUE(st.ok()) << st;
          ++appended;
          it->second += n;
          ASSERT_EQ(kv.num_free_blocks(), free_before - need);
        } else {
          ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
          ASSERT_EQ(kv.num_free_blocks(), free_before);
          ++exhausted;
        }
      } else if (!shadow.empty()) {
        auto it = shadow.begin();
        std::advance(it, rng() % shadow.size());
        ASSERT_TRUE(kv.FreeSequence(it->first).ok());
        shadow.erase(it);
      }
      ASSERT_TRUE(kv.CheckInvariants().ok()) << kv.CheckInvariants();
      // Per-head lengths follow the shadow and the pool accounts for every block.
      int64_t used = 0;
      int64_t tokens = 0;
      for (const auto& [id, len] : shadow) {
        const SequenceBlockTables* t = kv.Tables(id);
        ASSERT_NE(t, nullptr);
        for (const HeadBlockTable& head : t->heads) {
          ASSERT_EQ(head.num_kvs, len);
          ASSERT_EQ(static_cast<int64_t>(head.blocks.size()), CeilDiv(len, b));
        }
        used += lh * CeilDiv(len, b);
        tokens += len;
      }
      ASSERT_EQ(kv.num_free_blocks(), blocks - used);
      const KvStats s = kv.Stats(false);
      ASSERT_EQ(s.kvs_held, tokens * lh);
      ASSERT_EQ(s.kvs_uncompressed, tokens * lh);
      ASSERT_EQ(s.capacity.sequences, static_cast<int64_t>(shadow.size()));
    }
    for (const auto& [id, len] : shadow) ASSERT_TRUE(kv.FreeSequence(id).ok());
    EXPECT_EQ(kv.num_free_blocks(), blocks);
    EXPECT_TRUE(kv.CheckInvariants().ok());
  }
  // Both outcomes were exercised.
  EXPECT_GT(appended, 1000);
  EXPECT_GT(exhausted, 100);
}

// CheckInvariants must notice corrupted tables (the test corrupts them through const_cast).
TEST(KvManagerTest, CheckInvariantsDetectsCorruption) {
  auto make = [] {
    auto kv = std::make_unique<KvManager>(Options(1, 2, 4, 20));
    KVC_CHECK_OK(kv->AddSequence(1));
    KVC_CHECK_OK(kv->Append(1, 6));
    KVC_CHECK_OK(kv->AddSequence(2));
    KVC_CHECK_OK(kv->Append(2, 3));
    return kv;
  };
  auto mutable_tables = [](KvManager& kv, int64_t id) {
    return const_cast<SequenceBlockTables*>(kv.Tables(id));
  };
  {
    auto kv = make();
    ASSERT_TRUE(kv->CheckInvariants().ok());
    mutable_tables(*kv, 2)->heads[0].blocks[0] = mutable_tables(*kv, 1)->heads[1].blocks[1];
    absl::Status st = kv->CheckInvariants();
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("owned by both (seq"), std::string::npos) << st;
  }
  {
    auto kv = make();
    mutable_tables(*kv, 1)->heads[1].num_kvs = 9;  // more KVs than the sequence has tokens
    absl::Status st = kv->CheckInvariants();
    EXPECT_NE(st.message().find("the sequence has 6 tokens"), std::string::npos) << st;
  }
  {
    auto kv = make();
    mutable_tables(*kv, 1)->heads[1].num_kvs = 4;  // 4 KVs need 1 block, it has 2
    absl::Status st = kv->CheckInvariants();
    EXPECT_NE(st.message().find("holds 4 KVs in 2 blocks, expected 1"), std::string::npos) << st;
  }
  {
    auto kv = make();
    mutable_tables(*kv, 1)->heads[1].blocks.pop_back();  // block leaked: neither free nor owned
    mutable_tables(*kv, 1)->heads[1].num_kvs = 4;
    EXPECT_FALSE(kv->CheckInvariants().ok());
  }
  {
    auto kv = make();
    mutable_tables(*kv, 1)->heads[1].num_kvs = 5;  // block count still right, aggregates not
    absl::Status st = kv->CheckInvariants();
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("KVs held"), std::string::npos) << st;
  }
  {
    auto kv = make();
    mutable_tables(*kv, 1)->heads[0].blocks[1] = 19;  // a free block
    EXPECT_NE(kv->CheckInvariants().message().find("block 19 is free"), std::string::npos);
  }
  {
    auto kv = make();
    mutable_tables(*kv, 2)->heads[1].blocks[0] = 20;
    EXPECT_NE(kv->CheckInvariants().message().find("out-of-range"), std::string::npos);
  }
}

TEST(KvManagerTest, ConcurrentStatsReadersSeeConsistentSnapshots) {
  KvManager kv(Options(2, 2, 4, 400));
  std::atomic<bool> done{false};
  std::atomic<int64_t> bad{0};
  std::thread reader([&] {
    while (!done.load()) {
      const KvStats s = kv.Stats(true);
      int64_t layer_kvs = 0;
      for (const LayerOccupancy& l : s.layers) layer_kvs += l.kvs;
      if (layer_kvs != s.kvs_held || s.used_blocks + s.capacity.free_blocks != 400) ++bad;
    }
  });
  for (int i = 0; i < 2000; ++i) {
    const int64_t id = i % 8;
    if (kv.HasSequence(id)) {
      if (i % 3 == 0) {
        ASSERT_TRUE(kv.FreeSequence(id).ok());
      } else {
        (void)kv.Append(id, 1 + i % 5);
      }
    } else {
      ASSERT_TRUE(kv.AddSequence(id).ok());
    }
  }
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvc
