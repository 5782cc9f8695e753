// Compression budgets of KV-Compress (reference/kvcompress-spec.md §3.1) with kvc's semantics:
// the server's defaults really apply, a request overrides them field by field, and the budget is
// turned into "blocks this sequence must free now" for the eviction planner (eviction_plan.h).
// See docs/design/eviction.md.
//
// Budget modes (per sequence, shared by all its layers and kv heads):
//   * max_cache_tokens C: the sequence may hold ceil(C / b)·L·H blocks (C KVs per head on
//     average, rounded up to whole blocks). evict = max(0, held_blocks - ceil(C / b)·L·H).
//   * compression_rate ρ >= 1 (uncompressed KVs / kept KVs): with P' = ceil(P / b)·b,
//     target = ceil((T - min(T, P'))·L·H / ρ) + min(T, P')·L·H KVs for T tokens, and
//     evict = ceil(max(0, held_kvs - target) / b) (the spec's rule; an uncompressed sequence at
//     ρ = 1 evicts nothing).
//   * none: never evicts.
//
// Thread-safety: plain functions and value types.
#ifndef KVC_KVMANAGER_COMPRESSION_BUDGET_H_
#define KVC_KVMANAGER_COMPRESSION_BUDGET_H_

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"

namespace kvc {

enum class BudgetMode { kNone, kRate, kMaxCacheTokens };

// Why a compression ran (the label of KvStats::compressions_by_trigger).
enum class CompressionTrigger {
  kPrefill,         // right after a prefill (or a prefill chunk): compress to budget
  kMemoryPressure,  // free blocks short of what the running sequences need: compress first
  kInterval,        // the every-N-steps schedule
  kContinual,       // a decoding sequence grew over its budget
};
// "prefill", "memory_pressure", "interval", "continual".
std::string_view CompressionTriggerName(CompressionTrigger trigger);

// The resolved compression settings of one sequence.
struct CompressionSettings {
  BudgetMode mode = BudgetMode::kNone;
  double compression_rate = 1.0;  // kRate: >= 1 and finite
  int32_t max_cache_tokens = 0;   // kMaxCacheTokens: >= block_size
  EvictionConstraints constraints;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate(const KvLayout& layout) const;
};

// A request's optional fields (kvc.v1.CompressionParams); unset = the server's default.
struct CompressionOverrides {
  std::optional<double> compression_rate;
  std::optional<int32_t> max_cache_tokens;
  std::optional<int32_t> protected_window;
  std::optional<int32_t> sink_tokens;
  std::optional<int32_t> min_kvs_per_head;
};

// Server defaults overridden by the request. Setting a rate or a max_cache_tokens replaces the
// server's budget mode (setting both is INVALID_ARGUMENT). The result is validated.
absl::StatusOr<CompressionSettings> ResolveCompressionSettings(
    const CompressionSettings& server_defaults, const CompressionOverrides& request,
    const KvLayout& layout);

// Blocks a sequence must free for the max_cache_tokens budget: max(0, held - ceil(C/b)·L·H).
int64_t EvictBlocksForMaxCacheTokens(const KvLayout& layout, int64_t held_blocks,
                                     int64_t max_cache_tokens);
// The KVs a sequence of num_tokens tokens may keep at rate ρ (formula above).
int64_t TargetKvsForRate(const KvLayout& layout, int64_t num_tokens, double compression_rate,
                         int32_t protected_window);
// Blocks a sequence must free for the rate budget: ceil(max(0, held_kvs - target) / b).
int64_t EvictBlocksForRate(const KvLayout& layout, int64_t num_tokens, int64_t held_kvs,
                           double compression_rate, int32_t protected_window);
// Dispatches on settings.mode (0 for kNone).
int64_t EvictBlocksForBudget(const CompressionSettings& settings, const KvLayout& layout,
                             int64_t num_tokens, int64_t held_blocks, int64_t held_kvs);

}  // namespace kvc

#endif  // KVC_KVMANAGER_COMPRESSION_BUDGET_H_
