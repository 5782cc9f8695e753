// Test helpers for executor tests: a trivial block allocator that grows per-head block tables
// the way the KvManager does (shuffled free list, so block ids are not contiguous), and a
// one-call forward helper.
#ifndef KVC_TESTS_UNIT_WORKER_CPU_EXECUTOR_TEST_UTIL_H_
#define KVC_TESTS_UNIT_WORKER_CPU_EXECUTOR_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kvmanager/kv_layout.h"
#include "worker/executor.h"

namespace kvc::testing_util {

class TestBlockAllocator {
 public:
  // seed 0: ascending block ids; otherwise a shuffled free list.
  TestBlockAllocator(const KvLayout& layout, uint32_t seed) : layout_(layout) {
    free_.resize(layout.num_blocks);
    std::iota(free_.rbegin(), free_.rend(), 0);  // pop_back gives 0, 1, 2, ...
    if (seed != 0) {
      std::mt19937 rng(seed);
      std::shuffle(free_.begin(), free_.end(), rng);
    }
  }

  SequenceBlockTables NewSequence() const {
    SequenceBlockTables t;
    t.heads.resize(layout_.heads_per_seq());
    return t;
  }

  // Makes room for n more KVs in every head of `t`.
  void Reserve(SequenceBlockTables* t, int32_t n) {
    for (HeadBlockTable& h : t->heads) {
      h.num_kvs += n;
      while (static_cast<int64_t>(h.blocks.size()) * layout_.block_size < h.num_kvs) {
        EXPECT_FALSE(free_.empty()) << "test allocator ran out of blocks";
        if (free_.empty()) return;
        h.blocks.push_back(free_.back());
        free_.pop_back();
      }
    }
  }

  void Release(SequenceBlockTables* t) {
    for (HeadBlockTable& h : t->heads) {
      free_.insert(free_.end(), h.blocks.begin(), h.blocks.end());
      h.blocks.clear();
      h.num_kvs = 0;
    }
  }

  size_t free_blocks() const { return free_.size(); }

 private:
  KvLayout layout_;
  std::vector<int32_t> free_;
};

inline int32_t Argmax(const float* row, int32_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

}  // namespace kvc::testing_util

#endif  // KVC_TESTS_UNIT_WORKER_CPU_EXECUTOR_TEST_UTIL_H_
