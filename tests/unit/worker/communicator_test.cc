// LocalCommunicatorGroup: every collective's result on every rank, bit-reproducible reductions
// in rank order, argument mismatches reported on every rank alike (and the group still usable
// afterwards), Abort() unblocking waiting ranks, and a stress run of mixed collectives.
#include "worker/communicator.h"

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvc {
namespace {

// Runs fn(rank, comm) on one thread per rank of a fresh group.
void RunRanks(LocalCommunicatorGroup* group, const std::function<void(int, Communicator*)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < group->world_size(); ++r) {
    threads.emplace_back([&, r] { fn(r, group->communicator(r)); });
  }
  for (auto& t : threads) t.join();
}

std::unique_ptr<LocalCommunicatorGroup> Group(int n) {
  auto g = LocalCommunicatorGroup::Create(n);
  EXPECT_TRUE(g.ok()) << g.status();
  return std::move(*g);
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

TEST(CommunicatorTest, CreateRejectsBadWorldSizes) {
  EXPECT_EQ(LocalCommunicatorGroup::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LocalCommunicatorGroup::Create(-3).status().code(), absl::StatusCode::kInvalidArgument);
  auto g = Group(3);
  EXPECT_EQ(g->world_size(), 3);
  EXPECT_EQ(g->communicator(2)->rank(), 2);
  EXPECT_EQ(g->communicator(0)->world_size(), 3);
}

class CommunicatorSizeTest : public ::testing::TestWithParam<int> {};

TEST_P(CommunicatorSizeTest, AllReduceSumsInRankOrderWithIdenticalBitsOnEveryRank) {
  const int n = GetParam();
  auto g = Group(n);
  const int count = 1001;  // not a multiple of the world size: uneven reduce-scatter slices
  // Per-rank inputs whose sum depends on the summation order (large and small magnitudes).
  std::vector<std::vector<float>> in(n, std::vector<float>(count));
  std::vector<std::vector<int64_t>> in64(n, std::vector<int64_t>(count));
  std::mt19937 rng(n);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < count; ++i) {
      in[r][i] = u(rng) * (r % 2 == 0 ? 1e7f : 1e-3f);
      in64[r][i] = static_cast<int64_t>(rng()) * (i % 3 == 0 ? -1 : 1) << 20;
    }
  }
  std::vector<float> want(count);
  std::vector<int64_t> want64(count, 0);
  for (int i = 0; i < count; ++i) {
    float s = in[0][i];
    for (int r = 1; r < n; ++r) s += in[r][i];
    want[i] = s;
    for (int r = 0; r < n; ++r) want64[i] += in64[r][i];
  }
  std::vector<std::vector<float>> got = in;
  std::vector<std::vector<int64_t>> got64 = in64;
  std::vector<absl::Status> status(n), status64(n);
  RunRanks(g.get(), [&](int r, Communicator* c) {
    status[r] = c->AllReduceSum(std::span<float>(got[r]));
    status64[r] = c->AllReduceSum(std::span<int64_t>(got64[r]));
  });
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(status[r].ok()) << status[r];
    ASSERT_TRUE(status64[r].ok()) << status64[r];
    for (int i = 0; i < count; ++i) {
      ASSERT_EQ(Bits(got[r][i]), Bits(want[i])) << "rank " << r << " element " << i;
      ASSERT_EQ(got64[r][i], want64[i]) << "rank " << r << " element " << i;
    }
  }
}

TEST_P(CommunicatorSizeTest, AllGatherIsRankMajorAndBroadcastCopiesTheRoot) {
  const int n = GetParam();
  auto g = Group(n);
  const int count = 7;
  std::vector<std::vector<float>> recv(n, std::vector<float>(n * count, -1.0f));
  std::vector<std::vector<int32_t>> bcast(n);
  std::vector<absl::Status> status(n, absl::OkStatus());
  RunRanks(g.get(), [&](int r, Communicator* c) {
    std::vector<float> send(count);
    for (int i = 0; i < count; ++i) send[i] = 100.0f * r + i;
    absl::Status st = c->AllGather(send, recv[r]);
    for (int root = 0; root < n && st.ok(); ++root) {
      std::vector<int32_t> data(5, -r - 1);
      if (r == root) {
        for (int i = 0; i < 5; ++i) data[i] = 1000 * root + i;
      }
      st = c->Broadcast(std::as_writable_bytes(std::span<int32_t>(data)), root);
      for (int i = 0; i < 5 && st.ok(); ++i) {
        if (data[i] != 1000 * root + i) st = absl::InternalError("broadcast mismatch");
      }
    }
    status[r] = st;
  });
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
    for (int q = 0; q < n; ++q) {
      for (int i = 0; i < count; ++i) EXPECT_EQ(recv[r][q * count + i], 100.0f * q + i);
    }
  }
}

TEST_P(CommunicatorSizeTest, BarrierWaitsForEveryRank) {
  const int n = GetParam();
  auto g = Group(n);
  std::atomic<int> arrived{0};
  std::vector<int> seen(n * 20, -1);
  RunRanks(g.get(), [&](int r, Communicator* c) {
    for (int it = 0; it < 20; ++it) {
      if (r == it % n) std::this_thread::sleep_for(std::chrono::microseconds(200));
      arrived.fetch_add(1);
      ASSERT_TRUE(c->Barrier().ok());
      seen[it * n + r] = arrived.load();
      ASSERT_TRUE(c->Barrier().ok());  // nobody starts the next round before all have looked
    }
  });
  for (int it = 0; it < 20; ++it) {
    for (int r = 0; r < n; ++r) EXPECT_EQ(seen[it * n + r], n * (it + 1)) << it << " " << r;
  }
}

TEST_P(CommunicatorSizeTest, StressOfMixedCollectivesStaysCorrect) {
  const int n = GetParam();
  auto g = Group(n);
  std::vector<int> failures(n, 0);
  RunRanks(g.get(), [&](int r, Communicator* c) {
    std::mt19937 shared_rng(42);  // same sequence of ops and sizes on every rank
    for (int it = 0; it < 300; ++it) {
      const int op = shared_rng() % 3;
      const int count = shared_rng() % 40;
      if (op == 0) {
        std::vector<int64_t> v(count);
        for (int i = 0; i < count; ++i) v[i] = (r + 1) * (i + it);
        if (!c->AllReduceSum(std::span<int64_t>(v)).ok()) ++failures[r];
        for (int i = 0; i < count; ++i) {
          if (v[i] != static_cast<int64_t>(n) * (n + 1) / 2 * (i + it)) ++failures[r];
        }
      } else if (op == 1) {
        std::vector<float> send(count, static_cast<float>(r + it));
        std::vector<float> recv(count * n);
        if (!c->AllGather(send, recv).ok()) ++failures[r];
        for (int q = 0; q < n; ++q) {
          for (int i = 0; i < count; ++i) {
            if (recv[q * count + i] != static_cast<float>(q + it)) ++failures[r];
          }
        }
      } else {
        std::vector<float> v(count, static_cast<float>(r));
        if (!c->AllReduceSum(std::span<float>(v)).ok()) ++failures[r];
        for (float x : v) {
          if (x != static_cast<float>(n * (n - 1) / 2)) ++failures[r];
        }
      }
    }
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(failures[r], 0) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, CommunicatorSizeTest, ::testing::Values(1, 2, 3, 4, 8));

TEST(CommunicatorTest, MismatchedArgumentsFailOnEveryRankAndTheGroupStaysUsable) {
  auto g = Group(3);
  std::vector<absl::Status> count_mismatch(3), op_mismatch(3), recv_size(3), bad_root(3), after(3);
  std::vector<std::vector<float>> after_data(3);
  RunRanks(g.get(), [&](int r, Communicator* c) {
    std::vector<float> v(r == 1 ? 5 : 4, 1.0f);
    count_mismatch[r] = c->AllReduceSum(std::span<float>(v));
    if (r == 2) {
      op_mismatch[r] = c->Barrier();
    } else {
      op_mismatch[r] = c->AllReduceSum(std::span<float>(v.data(), 4));
    }
    std::vector<float> send(2, 0.0f), recv(r == 0 ? 5 : 6);
    recv_size[r] = c->AllGather(send, recv);
    std::vector<std::byte> bytes(3);
    bad_root[r] = c->Broadcast(bytes, 3);
    after_data[r] = {static_cast<float>(r), 1.0f};
    after[r] = c->AllReduceSum(std::span<float>(after_data[r]));
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(count_mismatch[r].code(), absl::StatusCode::kInvalidArgument) << count_mismatch[r];
    EXPECT_EQ(op_mismatch[r].code(), absl::StatusCode::kInternal) << op_mismatch[r];
    EXPECT_EQ(recv_size[r].code(), absl::StatusCode::kInvalidArgument) << recv_size[r];
    EXPECT_NE(recv_size[r].message().find("rank 0"), std::string::npos) << recv_size[r];
    EXPECT_EQ(bad_root[r].code(), absl::StatusCode::kInvalidArgument) << bad_root[r];
    ASSERT_TRUE(after[r].ok()) << after[r];
    EXPECT_EQ(after_data[r], (std::vector<float>{3.0f, 3.0f}));
  }
}

TEST(CommunicatorTest, AbortUnblocksWaitingRanksAndPoisonsTheGroup) {
  auto g = Group(3);
  absl::Status waited, later;
  std::atomic<bool> started{false};
  std::thread t([&] {
    started.store(true);
    waited = g->communicator(0)->Barrier();  // ranks 1 and 2 never come
    std::vector<float> v(2);
    later = g->communicator(0)->AllReduceSum(std::span<float>(v));
  });
  while (!started.load()) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(g->aborted());
  g->communicator(2)->Abort();
  t.join();
  EXPECT_TRUE(g->aborted());
  EXPECT_EQ(waited.code(), absl::StatusCode::kAborted) << waited;
  EXPECT_EQ(later.code(), absl::StatusCode::kAborted) << later;
}

TEST(CommunicatorTest, SingleRankCollectivesAreLocal) {
  auto g = Group(1);
  Communicator* c = g->communicator(0);
  std::vector<float> v = {1.5f, -2.0f};
  ASSERT_TRUE(c->AllReduceSum(std::span<float>(v)).ok());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f}));
  std::vector<float> recv(2);
  ASSERT_TRUE(c->AllGather(v, recv).ok());
  EXPECT_EQ(recv, v);
  std::vector<float> small(1);
  EXPECT_EQ(c->AllGather(v, small).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(c->Barrier().ok());
  c->Abort();
  EXPECT_EQ(c->Barrier().code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace kvc
