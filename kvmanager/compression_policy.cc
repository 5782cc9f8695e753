#include "kvmanager/compression_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace kvc {
namespace {

constexpr std::pair<CompressionPolicyKind, std::string_view> kPolicyNames[] = {
    {CompressionPolicyKind::kNone, "none"},
    {CompressionPolicyKind::kKvCompress, "kvcompress"},
    {CompressionPolicyKind::kSnapKv, "snapkv"},
    {CompressionPolicyKind::kPyramidKv, "pyramidkv"},
    {CompressionPolicyKind::kStreaming, "streaming"},
    {CompressionPolicyKind::kRandom, "random"},
};

// A score the planner never evicts (NaN or +inf); score-replacing readers keep these as they are.
inline bool Pinned(float score) {
  return std::isnan(score) || score == std::numeric_limits<float>::infinity();
}

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// StreamingLLM's view: each KV's score is its position (oldest = lowest = evicted first); pinned
// scores stay pinned. float(position) is monotone in the position and the planner breaks equal
// scores by position, so the order is exactly by position even past 2^24.
class PositionScoreReader final : public KvSlotReader {
 public:
  explicit PositionScoreReader(const KvSlotReader& base) : base_(base) {}
  float Score(int32_t block, int32_t offset) const override {
    const float s = base_.Score(block, offset);
    return Pinned(s) ? s : static_cast<float>(base_.Position(block, offset));
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    return base_.Position(block, offset);
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    base_.ReadBlock(block, count, scores, positions);
    for (int32_t i = 0; i < count; ++i) {
      if (!Pinned(scores[i])) scores[i] = static_cast<float>(positions[i]);
    }
  }

 private:
  const KvSlotReader& base_;
};

// The random baseline's view: each KV's score is RandomEvictionScore(seed, position, head).
class RandomScoreReader final : public KvSlotReader {
 public:
  RandomScoreReader(const KvSlotReader& base, uint64_t seed,
                    const absl::flat_hash_map<int32_t, int32_t>& head_of_block)
      : base_(base), seed_(seed), head_of_block_(head_of_block) {}
  float Score(int32_t block, int32_t offset) const override {
    const float s = base_.Score(block, offset);
    return Pinned(s) ? s : RandomEvictionScore(seed_, base_.Position(block, offset), HeadOf(block));
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    return base_.Position(block, offset);
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    base_.ReadBlock(block, count, scores, positions);
    const int32_t head = HeadOf(block);
    for (int32_t i = 0; i < count; ++i) {
      if (!Pinned(scores[i])) scores[i] = RandomEvictionScore(seed_, positions[i], head);
    }
  }

 private:
  int32_t HeadOf(int32_t block) const {
    const auto it = head_of_block_.find(block);
    KVC_CHECK(it != head_of_block_.end()) << "block " << block << " is not in the sequence";
    return it->second;
  }
  const KvSlotReader& base_;
  uint64_t seed_;
  const absl::flat_hash_map<int32_t, int32_t>& head_of_block_;
};

// Common argument checks; an empty plan for B == 0.
absl::Status CheckPlanArgs(const KvLayout& layout, const SequenceBlockTables& tables,
                           int64_t num_tokens, int64_t evict_blocks,
                           const EvictionConstraints& constraints) {
  if (evict_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("evict_blocks must be >= 0, got ", evict_blocks));
  }
  return ValidateEvictionInput(layout, tables, num_tokens, constraints);
}

EvictionPlan EmptyPlan(int64_t evict_blocks) {
  EvictionPlan plan;
  plan.blocks_requested = evict_blocks;
  return plan;
}

class NonePolicy final : public CompressionPolicy {
 public:
  CompressionPolicyKind kind() const override { return CompressionPolicyKind::kNone; }
  absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                    const KvSlotReader& reader, int64_t num_tokens,
                                    int64_t evict_blocks, const EvictionConstraints& constraints,
                                    uint64_t seq_seed) override {
    RETURN_IF_ERROR(CheckPlanArgs(layout, tables, num_tokens, evict_blocks, constraints));
    return EmptyPlan(evict_blocks);
  }
};

class KvCompressPolicy final : public CompressionPolicy {
 public:
  CompressionPolicyKind kind() const override { return CompressionPolicyKind::kKvCompress; }
  absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                    const KvSlotReader& reader, int64_t num_tokens,
                                    int64_t evict_blocks, const EvictionConstraints& constraints,
                                    uint64_t seq_seed) override {
    return planner_.Plan(layout, tables, reader, num_tokens, evict_blocks, constraints);
  }

 private:
  EvictionPlanner planner_;
};

// snapkv, pyramidkv and streaming: per-head block counts by weighted water-filling
// (AllocateBlocksProportional), then the per-head rule of EvictionPlanner::PlanWithChooser.
class AllocatingPolicy final : public CompressionPolicy {
 public:
  AllocatingPolicy(CompressionPolicyKind kind, const CompressionPolicyOptions& options)
      : kind_(kind), options_(options) {}
  CompressionPolicyKind kind() const override { return kind_; }

  absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                    const KvSlotReader& reader, int64_t num_tokens,
                                    int64_t evict_blocks, const EvictionConstraints& constraints,
                                    uint64_t seq_seed) override {
    RETURN_IF_ERROR(CheckPlanArgs(layout, tables, num_tokens, evict_blocks, constraints));
    if (evict_blocks == 0) return EmptyPlan(evict_blocks);
    EvictionConstraints effective = constraints;
    PositionScoreReader position_reader(reader);
    const KvSlotReader* view = &reader;
    if (kind_ == CompressionPolicyKind::kStreaming) {
      if (effective.sink_tokens == 0) effective.sink_tokens = options_.streaming_sink_tokens;
      view = &position_reader;
    }
    const int32_t num_heads = layout.heads_per_seq();
    weights_.assign(num_heads, 1);
    if (kind_ == CompressionPolicyKind::kPyramidKv) {
      const std::vector<int64_t> layer =
          PyramidLayerWeights(layout.num_layers, options_.pyramid_beta);
      for (int32_t h = 0; h < num_heads; ++h) weights_[h] = layer[h / layout.num_kv_heads];
    }
    held_.resize(num_heads);
    for (int32_t h = 0; h < num_heads; ++h) {
      held_[h] = static_cast<int32_t>(tables.heads[h].blocks.size());
    }
    return planner_.PlanWithChooser(layout, tables, *view, num_tokens, evict_blocks, effective,
                                    [&](std::span<const int32_t> kmax, std::span<int32_t> k) {
                                      const std::vector<int32_t> chosen =
                                          AllocateBlocksProportional(held_, kmax, weights_,
                                                                     evict_blocks);
                                      std::copy(chosen.begin(), chosen.end(), k.begin());
                                    });
  }

 private:
  const CompressionPolicyKind kind_;
  const CompressionPolicyOptions options_;
  EvictionPlanner planner_;
  std::vector<int64_t> weights_;
  std::vector<int32_t> held_;
};

class RandomPolicy final : public CompressionPolicy {
 public:
  CompressionPolicyKind kind() const override { return CompressionPolicyKind::kRandom; }
  absl::StatusOr<EvictionPlan> Plan(const KvLayout& layout, const SequenceBlockTables& tables,
                                    const KvSlotReader& reader, int64_t num_tokens,
                                    int64_t evict_blocks, const EvictionConstraints& constraints,
                                    uint64_t seq_seed) override {
    RETURN_IF_ERROR(CheckPlanArgs(layout, tables, num_tokens, evict_blocks, constraints));
    if (evict_blocks == 0) return EmptyPlan(evict_blocks);
    head_of_block_.clear();
    for (size_t h = 0; h < tables.heads.size(); ++h) {
      for (const int32_t block : tables.heads[h].blocks) {
        head_of_block_[block] = static_cast<int32_t>(h);
      }
    }
    const RandomScoreReader view(reader, seq_seed, head_of_block_);
    return planner_.Plan(layout, tables, view, num_tokens, evict_blocks, constraints);
  }

 private:
  EvictionPlanner planner_;
  absl::flat_hash_map<int32_t, int32_t> head_of_block_;
};

}  // namespace

std::string_view CompressionPolicyName(CompressionPolicyKind kind) {
  for (const auto& [k, name] : kPolicyNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

absl::StatusOr<CompressionPolicyKind> ParseCompressionPolicy(std::string_view name) {
  for (const auto& [kind, n] : kPolicyNames) {
    if (n == name) return kind;
  }
  std::string valid;
  for (const auto& [kind, n] : kPolicyNames) {
    absl::StrAppend(&valid, valid.empty() ? "" : ", ", std::string(n));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("compression policy \"", std::string(name), "\" is not one of: ", valid));
}

absl::Status CompressionPolicyOptions::Validate() const {
  if (pyramid_beta < 1 || pyramid_beta > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("pyramid_beta must be in [1, 10000], got ", pyramid_beta));
  }
  if (streaming_sink_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("streaming_sink_tokens must be >= 0, got ", streaming_sink_tokens));
  }
  return absl::OkStatus();
}

std::unique_ptr<CompressionPolicy> MakeCompressionPolicy(CompressionPolicyKind kind,
                                                         const CompressionPolicyOptions& options) {
  const absl::Status status = options.Validate();
  KVC_CHECK(status.ok()) << status.message();
  switch (kind) {
    case CompressionPolicyKind::kNone:
      return std::make_unique<NonePolicy>();
    case CompressionPolicyKind::kKvCompress:
      return std::make_unique<KvCompressPolicy>();
    case CompressionPolicyKind::kSnapKv:
    case CompressionPolicyKind::kPyramidKv:
    case CompressionPolicyKind::kStreaming:
      return std::make_unique<AllocatingPolicy>(kind, options);
    case CompressionPolicyKind::kRandom:
      return std::make_unique<RandomPolicy>();
  }
  KVC_CHECK(false) << "unknown CompressionPolicyKind " << static_cast<int>(kind);
  return nullptr;
}

std::unique_ptr<CompressionPolicy> MakeCompressionPolicy(CompressionPolicyKind kind) {
  return MakeCompressionPolicy(kind, CompressionPolicyOptions{});
}

absl::StatusOr<EvictionPlan> PlanSequenceEviction(const KvManager& kv, int64_t seq_id,
                                                  const KvSlotReader& reader, int64_t evict_blocks,
                                                  const EvictionConstraints& constraints,
                                                  uint64_t seq_seed, CompressionPolicy& policy) {
  const SequenceBlockTables* tables = kv.Tables(seq_id);
  if (tables == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  }
  ASSIGN_OR_RETURN(const SequenceUsage usage, kv.Usage(seq_id));
  return policy.Plan(kv.layout(), *tables, reader, usage.tokens, evict_blocks, constraints,
                     seq_seed);
}

std::vector<int32_t> AllocateBlocksProportional(std::span<const int32_t> held_blocks,
                                                std::span<const int32_t> max_blocks,
                                                std::span<const int64_t> weights,
                                                int64_t evict_blocks) {
  const size_t num_heads = held_blocks.size();
  KVC_CHECK_EQ(max_blocks.size(), num_heads);
  KVC_CHECK_EQ(weights.size(), num_heads);
  std::vector<int32_t> k(num_heads, 0);
  int64_t available = 0;
  for (size_t h = 0; h < num_heads; ++h) {
    KVC_CHECK(max_blocks[h] >= 0 && max_blocks[h] <= held_blocks[h])
        << "head " << h << ": max_blocks " << max_blocks[h] << ", held " << held_blocks[h];
    KVC_CHECK(weights[h] >= 1 && weights[h] < (int64_t{1} << 31))
        << "head " << h << ": weight " << weights[h];
    available += max_blocks[h];
  }
  if (evict_blocks >= available) {
    std::copy(max_blocks.begin(), max_blocks.end(), k.begin());
    return k;
  }
  if (evict_blocks <= 0) return k;

  // Max-heap of each head's next block by priority held / weight (exact: cross products of
  // values < 2^31 fit in int64), ties to the lower head index.
  struct Next {
    int64_t held;
    int64_t weight;
    int32_t head;
  };
  auto lower_priority = [](const Next& a, const Next& b) {
    const int64_t lhs = a.held * b.weight;
    const int64_t rhs = b.held * a.weight;
    if (lhs != rhs) return lhs < rhs;
    return a.head > b.head;
  };
  std::vector<Next> storage;
  storage.reserve(num_heads);
  for (size_t h = 0; h < num_heads; ++h) {
    if (max_blocks[h] > 0) {
      storage.push_back(Next{held_blocks[h], weights[h], static_cast<int32_t>(h)});
    }
  }
  std::priority_queue<Next, std::vector<Next>, decltype(lower_priority)> heap(lower_priority,
                                                                              std::move(storage));
  for (int64_t taken = 0; taken < evict_blocks; ++taken) {
    KVC_CHECK(!heap.empty());
    Next next = heap.top();
    heap.pop();
    if (++k[next.head] < max_blocks[next.head]) {
      --next.held;
      heap.push(next);
    }
  }
  return k;
}

std::vector<int64_t> PyramidLayerWeights(int32_t num_layers, int32_t beta) {
  KVC_CHECK_GE(num_layers, 1);
  KVC_CHECK_GE(beta, 1);
  if (num_layers == 1) return {1};
  std::vector<int64_t> weights(num_layers);
  const int64_t top = num_layers - 1;
  const int64_t step = 2 * static_cast<int64_t>(beta) - 2;
  for (int32_t l = 0; l < num_layers; ++l) weights[l] = top + step * (num_layers - 1 - l);
  return weights;
}

float RandomEvictionScore(uint64_t seed, int32_t position, int32_t head_index) {
  const uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(position)) |
                       (static_cast<uint64_t>(static_cast<uint32_t>(head_index)) << 32);
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ key);
  return static_cast<float>(h >> 40) * 0x1.0p-24f;
}

}  // namespace kvc
