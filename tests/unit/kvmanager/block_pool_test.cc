#include "kvmanager/block_pool.h"

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvc {
namespace {

TEST(BlockPoolTest, FreshPoolHandsOutLowestIdsFirst) {
  BlockPool pool(5);
  EXPECT_EQ(pool.num_total(), 5);
  EXPECT_EQ(pool.num_free(), 5);
  auto ids = pool.Allocate(3);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(pool.num_used(), 3);
  EXPECT_FALSE(pool.IsFree(1));
  EXPECT_TRUE(pool.IsFree(3));
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(BlockPoolTest, AllocateIsAllOrNothing) {
  BlockPool pool(4);
  ASSERT_TRUE(pool.Allocate(3).ok());
  auto too_many = pool.Allocate(2);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.num_free(), 1);
  std::vector<int32_t> out = {42};
  EXPECT_EQ(pool.AllocateInto(2, &out).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(out, std::vector<int32_t>{42});
  EXPECT_EQ(pool.AllocateInto(-1, &out).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pool.AllocateInto(1, &out).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{42, 3}));
  EXPECT_EQ(pool.num_free(), 0);
  auto zero = pool.Allocate(0);
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->empty());
}

TEST(BlockPoolTest, FreedIdsAreReusedLastInFirstOut) {
  BlockPool pool(6);
  auto ids = pool.Allocate(6);
  ASSERT_TRUE(ids.ok());
  pool.Free(std::vector<int32_t>{4, 1});
  EXPECT_EQ(pool.num_free(), 2);
  auto again = pool.Allocate(2);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, (std::vector<int32_t>{1, 4}));
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(BlockPoolTest, RandomAllocFreeKeepsEveryIdExactlyOnce) {
  std::mt19937 rng(7);
  BlockPool pool(100);
  std::vector<int32_t> held;
  for (int step = 0; step < 5000; ++step) {
    if (rng() % 2 == 0) {
      const int64_t n = rng() % 12;
      const int64_t before = pool.num_free();
      auto ids = pool.Allocate(n);
      if (n > before) {
        EXPECT_EQ(ids.status().code(), absl::StatusCode::kResourceExhausted);
        EXPECT_EQ(pool.num_free(), before);
      } else {
        ASSERT_TRUE(ids.ok());
        held.insert(held.end(), ids->begin(), ids->end());
      }
    } else if (!held.empty()) {
      std::shuffle(held.begin(), held.end(), rng);
      const size_t n = rng() % (held.size() + 1);
      pool.Free(std::span<const int32_t>(held.data() + held.size() - n, n));
      held.resize(held.size() - n);
    }
    ASSERT_TRUE(pool.CheckInvariants().ok());
    ASSERT_EQ(pool.num_used(), static_cast<int64_t>(held.size()));
    std::set<int32_t> all(held.begin(), held.end());
    ASSERT_EQ(all.size(), held.size()) << "an id was handed out twice";
    for (int32_t id : pool.free_list()) ASSERT_EQ(all.count(id), 0u);
  }
}

TEST(BlockPoolDeathTest, DoubleFreeAborts) {
  BlockPool pool(3);
  auto ids = pool.Allocate(2);
  ASSERT_TRUE(ids.ok());
  pool.Free(std::vector<int32_t>{0});
  EXPECT_DEATH(pool.Free(std::vector<int32_t>{0}), "double free of block 0");
  EXPECT_DEATH(pool.Free(std::vector<int32_t>{1, 1}), "double free of block 1");
  EXPECT_DEATH(pool.Free(std::vector<int32_t>{7}), "out of range");
}

}  // namespace
}  // namespace kvc
