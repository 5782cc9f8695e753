#include "kvmanager/compression_budget.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvc {
namespace {
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

std::string_view CompressionTriggerName(CompressionTrigger trigger) {
  switch (trigger) {
    case CompressionTrigger::kPrefill:
      return "prefill";
    case CompressionTrigger::kMemoryPressure:
      return "memory_pressure";
    case CompressionTrigger::kInterval:
      return "interval";
    case CompressionTrigger::kContinual:
      return "continual";
  }
  return "unknown";
}

absl::Status CompressionSettings::Validate(const KvLayout& layout) const {
  if (mode == BudgetMode::kRate && !(std::isfinite(compression_rate) && compression_rate >= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("compression_rate must be finite and >= 1, got ", compression_rate));
  }
  if (mode == BudgetMode::kMaxCacheTokens && max_cache_tokens < layout.block_size) {
    return absl::InvalidArgumentError(absl::StrCat("max_cache_tokens must be >= block_size (",
                                                   layout.block_size, "), got ", max_cache_tokens));
  }
  if (constraints.protected_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("protected_window must be >= 0, got ", constraints.protected_window));
  }
  if (constraints.sink_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_tokens must be >= 0, got ", constraints.sink_tokens));
  }
  if (constraints.min_kvs_per_head < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_kvs_per_head must be >= 0, got ", constraints.min_kvs_per_head));
  }
  return absl::OkStatus();
}

absl::StatusOr<CompressionSettings> ResolveCompressionSettings(
    const CompressionSettings& server_defaults, const CompressionOverrides& request,
    const KvLayout& layout) {
  if (request.compression_rate.has_value() && request.max_cache_tokens.has_value()) {
    return absl::InvalidArgumentError(
        "at most one of compression_rate and max_cache_tokens may be set");
  }
  CompressionSettings s = server_defaults;
  if (request.compression_rate.has_value()) {
    s.mode = BudgetMode::kRate;
    s.compression_rate = *request.compression_rate;
  } else if (request.max_cache_tokens.has_value()) {
    s.mode = BudgetMode::kMaxCacheTokens;
    s.max_cache_tokens = *request.max_cache_tokens;
  }
  if (request.protected_window) s.constraints.protected_window = *request.protected_window;
  if (request.sink_tokens) s.constraints.sink_tokens = *request.sink_tokens;
  if (request.min_kvs_per_head) s.constraints.min_kvs_per_head = *request.min_kvs_per_head;
  absl::Status status = s.Validate(layout);
  if (!status.ok()) return status;
  return s;
}

int64_t EvictBlocksForMaxCacheTokens(const KvLayout& layout, int64_t held_blocks,
                                     int64_t max_cache_tokens) {
  const int64_t allowed =
      CeilDiv(std::max<int64_t>(0, max_cache_tokens), layout.block_size) * layout.heads_per_seq();
  return std::max<int64_t>(0, held_blocks - allowed);
}

int64_t TargetKvsForRate(const KvLayout& layout, int64_t num_tokens, double compression_rate,
                         int32_t protected_window) {
  const int64_t heads = layout.heads_per_seq();
  const int64_t p_rounded =
      CeilDiv(std::max(0, protected_window), layout.block_size) * layout.block_size;
  const int64_t kept_tail = std::min(num_tokens, p_rounded);
  const double rate = std::max(1.0, compression_rate);
  const double compressible = static_cast<double>((num_tokens - kept_tail) * heads);
  return static_cast<int64_t>(std::ceil(compressible / rate)) + kept_tail * heads;
}

int64_t EvictBlocksForRate(const KvLayout& layout, int64_t num_tokens, int64_t held_kvs,
                           double compression_rate, int32_t protected_window) {
  const int64_t target = TargetKvsForRate(layout, num_tokens, compression_rate, protected_window);
  return CeilDiv(std::max<int64_t>(0, held_kvs - target), layout.block_size);
}

int64_t EvictBlocksForBudget(const CompressionSettings& settings, const KvLayout& layout,
                             int64_t num_tokens, int64_t held_blocks, int64_t held_kvs) {
  switch (settings.mode) {
    case BudgetMode::kNone:
      return 0;
    case BudgetMode::kRate:
      return EvictBlocksForRate(layout, num_tokens, held_kvs, settings.compression_rate,
                                settings.constraints.protected_window);
    case BudgetMode::kMaxCacheTokens:
      return EvictBlocksForMaxCacheTokens(layout, held_blocks, settings.max_cache_tokens);
  }
  return 0;
}

}  // namespace kvc
