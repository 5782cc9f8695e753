// Host side of the CUDA kernels: validation of the Params structs, dispatch of the runtime
// head_dim to the template instances, cudaError_t -> absl::Status. Compiled by the host
// compiler (the only file of kvc_kernels_cuda that sees Abseil).
#include "kernels/include/kvc/kernels/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/launch.h"

namespace kvc::kernels {
namespace {

using internal::DecodeWorkspace;

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(what); }

absl::Status FromCuda(cudaError_t err, const char* kernel) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(kernel, ": CUDA launch failed: ", cudaGetErrorString(err)));
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

absl::Status CheckRows(const char* kernel, const char* field, const void* ptr, int64_t stride,
                       bool required) {
  if (ptr == nullptr) {
    if (required) return Invalid(absl::StrCat(kernel, ": ", field, " is null"));
    return absl::OkStatus();
  }
  if (!Aligned16(ptr)) return Invalid(absl::StrCat(kernel, ": ", field, " is not 16-byte aligned"));
  if (stride < 0 || stride % 8 != 0) {
    return Invalid(absl::StrCat(kernel, ": ", field, "_stride ", stride,
                                " must be a non-negative multiple of 8"));
  }
  return absl::OkStatus();
}

absl::Status CheckCache(const char* kernel, const PagedKvCache& c, bool need_scores,
                        bool need_positions) {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return Invalid(absl::StrCat(kernel, ": cache.head_dim ", c.head_dim, " not in {64, 128}"));
  }
  if (c.block_size != 8 && c.block_size != 16 && c.block_size != 32) {
    return Invalid(
        absl::StrCat(kernel, ": cache.block_size ", c.block_size, " not in {8, 16, 32}"));
  }
  if (c.num_blocks <= 0) return Invalid(absl::StrCat(kernel, ": cache.num_blocks must be > 0"));
  RETURN_IF_ERROR(CheckRows(kernel, "cache.k", c.k, 0, true));
  RETURN_IF_ERROR(CheckRows(kernel, "cache.v", c.v, 0, true));
  if (need_scores && c.scores == nullptr) {
    return Invalid(absl::StrCat(kernel, ": cache.scores is null"));
  }
  if (need_positions && c.positions == nullptr) {
    return Invalid(absl::StrCat(kernel, ": cache.positions is null"));
  }
  return absl::OkStatus();
}

absl::Status CheckTables(const char* kernel, const HeadTables& t) {
  if (t.num_seqs < 0 || t.num_kv_heads <= 0) {
    return Invalid(absl::StrCat(kernel, ": tables.num_seqs ", t.num_seqs, " / tables.num_kv_heads ",
                                t.num_kv_heads, " out of range"));
  }
  if (t.max_num_kvs < 0) return Invalid(absl::StrCat(kernel, ": tables.max_num_kvs < 0"));
  if (t.num_seqs > 0 &&
      (t.block_ids == nullptr || t.table_offsets == nullptr || t.num_kvs == nullptr)) {
    return Invalid(absl::StrCat(kernel, ": tables.block_ids/table_offsets/num_kvs is null"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Group(const char* kernel, int32_t num_q_heads, int32_t num_kv_heads) {
  if (num_q_heads <= 0 || num_q_heads % num_kv_heads != 0) {
    return Invalid(absl::StrCat(kernel, ": num_q_heads ", num_q_heads,
                                " is not a multiple of tables.num_kv_heads ", num_kv_heads));
  }
  const int g = num_q_heads / num_kv_heads;
  if (g != 1 && g != 2 && g != 4 && g != 8) {
    return Invalid(absl::StrCat(kernel, ": group size num_q_heads / num_kv_heads = ", g,
                                " not in {1, 2, 4, 8}"));
  }
  return g;
}

cudaStream_t Stream(StreamHandle s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

absl::Status AppendKv(const KvAppendParams& p, StreamHandle stream) {
  constexpr const char* kName = "AppendKv";
  RETURN_IF_ERROR(CheckCache(kName, p.cache, true, true));
  RETURN_IF_ERROR(CheckTables(kName, p.tables));
  if (p.num_tokens < 0) return Invalid("AppendKv: num_tokens < 0");
  if (p.num_tokens > 0 && (p.cu_tokens == nullptr || p.token_positions == nullptr)) {
    return Invalid("AppendKv: cu_tokens/token_positions is null");
  }
  RETURN_IF_ERROR(CheckRows(kName, "k", p.k, p.k_stride, p.num_tokens > 0));
  RETURN_IF_ERROR(CheckRows(kName, "v", p.v, p.v_stride, p.num_tokens > 0));
  return FromCuda(internal::LaunchAppendKv(p, Stream(stream)), kName);
}

DecodeAttentionPlan MakeDecodeAttentionPlan(int32_t num_seqs, int32_t num_kv_heads,
                                            int32_t num_q_heads, int32_t head_dim,
                                            int32_t max_num_kvs, int32_t num_sms,
                                            bool accumulate_scores) {
  // Cost model, in units of "one KV read by one CTA slot": CTAs of a split run in waves of
  // `slots` (all CTAs of a full-length head do equal work), each CTA costs its chunk plus a fixed
  // overhead (query load, warp merge, partial write), and every split adds combine work.
  constexpr int64_t kCtaOverheadKvs = 48;
  constexpr int64_t kCombinePerSplit = 2;
  constexpr int32_t kMaxSplits = 1024;
  const int64_t heads = std::max<int64_t>(1, static_cast<int64_t>(num_seqs) * num_kv_heads);
  const int32_t max_n = std::max(max_num_kvs, 1);
  const int64_t slots =
      static_cast<int64_t>(internal::DecodeCtasPerSm(head_dim)) * std::max(num_sms, 1);
  const int32_t max_splits = std::min(kMaxSplits, (max_n + 63) / 64);  // chunks >= 64 KVs
  int32_t best_chunk = (max_n + 15) / 16 * 16;
  int64_t best_cost = -1;
  for (int32_t want = 1; want <= std::max(max_splits, 1); ++want) {
    const int32_t chunk = ((max_n + want - 1) / want + 15) / 16 * 16;
    const int32_t splits = (max_n + chunk - 1) / chunk;
    if (splits != want) continue;  // same chunk as a smaller split count
    const int64_t waves = (heads * splits + slots - 1) / slots;
    const int64_t cost =
        waves * (chunk + kCtaOverheadKvs) + (splits > 1 ? splits * kCombinePerSplit : 0);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best_chunk = chunk;
    }
  }
  DecodeAttentionPlan plan;
  plan.chunk_size = best_chunk;
  plan.num_splits = (max_n + best_chunk - 1) / best_chunk;
  const int32_t group = num_kv_heads > 0 ? num_q_heads / num_kv_heads : 1;
  plan.workspace_bytes = DecodeWorkspace(num_seqs, num_kv_heads, group, head_dim, plan.num_splits,
                                         best_chunk, accumulate_scores)
                             .total;
  return plan;
}

int64_t DecodeAttentionWorkspaceBytes(int32_t num_seqs, int32_t num_kv_heads, int32_t num_q_heads,
                                      int32_t head_dim, int32_t num_splits, int32_t chunk_size,
                                      bool accumulate_scores) {
  const int32_t group = num_kv_heads > 0 ? num_q_heads / num_kv_heads : 1;
  return DecodeWorkspace(num_seqs, num_kv_heads, group, head_dim, num_splits, chunk_size,
                         accumulate_scores)
      .total;
}

absl::Status DecodeAttention(const DecodeAttentionParams& p, StreamHandle stream) {
  constexpr const char* kName = "DecodeAttention";
  RETURN_IF_ERROR(CheckCache(kName, p.cache, p.accumulate_scores, false));
  RETURN_IF_ERROR(CheckTables(kName, p.tables));
  ASSIGN_OR_RETURN(const int group, Group(kName, p.num_q_heads, p.tables.num_kv_heads));
  if (p.tables.num_seqs == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckRows(kName, "q", p.q, p.q_stride, true));
  RETURN_IF_ERROR(CheckRows(kName, "out", p.out, p.out_stride, true));
  if (p.num_splits < 1 || p.num_splits > 65535) {
    return Invalid(absl::StrCat(kName, ": num_splits ", p.num_splits, " not in [1, 65535]"));
  }
  if (p.chunk_size <= 0 || p.chunk_size % 16 != 0) {
    return Invalid(
        absl::StrCat(kName, ": chunk_size ", p.chunk_size, " must be a positive multiple of 16"));
  }
  if (static_cast<int64_t>(p.chunk_size) * p.num_splits < p.tables.max_num_kvs) {
    return Invalid(absl::StrCat(kName, ": num_splits * chunk_size < tables.max_num_kvs ",
                                p.tables.max_num_kvs));
  }
  const int64_t need =
      DecodeWorkspace(p.tables.num_seqs, p.tables.num_kv_heads, group, p.cache.head_dim,
                      p.num_splits, p.chunk_size, p.accumulate_scores)
          .total;
  if (p.workspace_bytes < need || (need > 0 && p.workspace == nullptr)) {
    return Invalid(absl::StrCat(kName, ": workspace_bytes ", p.workspace_bytes, " < ", need));
  }
  if (reinterpret_cast<uintptr_t>(p.workspace) % 256 != 0) {
    return Invalid(absl::StrCat(kName, ": workspace is not 256-byte aligned"));
  }
  const cudaError_t err = p.cache.head_dim == 64
                              ? internal::LaunchDecodeAttention<64>(p, Stream(stream))
                              : internal::LaunchDecodeAttention<128>(p, Stream(stream));
  return FromCuda(err, kName);
}

absl::Status PrefillAttention(const PrefillAttentionParams& p, StreamHandle stream) {
  constexpr const char* kName = "PrefillAttention";
  RETURN_IF_ERROR(CheckCache(kName, p.cache, false, true));
  RETURN_IF_ERROR(CheckTables(kName, p.tables));
  ASSIGN_OR_RETURN(const int group, Group(kName, p.num_q_heads, p.tables.num_kv_heads));
  if (p.tables.num_seqs == 0 || p.num_tokens == 0) return absl::OkStatus();
  if (p.cu_q == nullptr || p.q_positions == nullptr) {
    return Invalid(absl::StrCat(kName, ": cu_q/q_positions is null"));
  }
  if (p.max_q_len <= 0 || p.max_q_len > p.num_tokens) {
    return Invalid(absl::StrCat(kName, ": max_q_len ", p.max_q_len, " not in [1, num_tokens ",
                                p.num_tokens, "]"));
  }
  if ((static_cast<int64_t>(p.max_q_len) * group + 63) / 64 > 65535) {
    return Invalid(absl::StrCat(kName, ": max_q_len ", p.max_q_len, " too large"));
  }
  RETURN_IF_ERROR(CheckRows(kName, "q", p.q, p.q_stride, true));
  RETURN_IF_ERROR(CheckRows(kName, "out", p.out, p.out_stride, true));
  const cudaError_t err = p.cache.head_dim == 64
                              ? internal::LaunchPrefillAttention<64>(p, Stream(stream))
                              : internal::LaunchPrefillAttention<128>(p, Stream(stream));
  return FromCuda(err, kName);
}

int64_t WindowScoreWorkspaceBytes(int32_t num_seqs, int32_t num_kv_heads, int32_t num_q_heads,
                                  int32_t max_num_kvs) {
  const int32_t group = num_kv_heads > 0 ? num_q_heads / num_kv_heads : 1;
  return internal::WindowWorkspaceBytes(num_seqs, num_kv_heads, group, max_num_kvs);
}

absl::Status AccumulateWindowScores(const WindowScoreParams& p, StreamHandle stream) {
  constexpr const char* kName = "AccumulateWindowScores";
  RETURN_IF_ERROR(CheckCache(kName, p.cache, true, true));
  RETURN_IF_ERROR(CheckTables(kName, p.tables));
  ASSIGN_OR_RETURN(const int group, Group(kName, p.num_q_heads, p.tables.num_kv_heads));
  if (p.tables.num_seqs == 0) return absl::OkStatus();
  if (p.window < 1) return Invalid(absl::StrCat(kName, ": window ", p.window, " must be >= 1"));
  if (p.pool_kernel < 0 || (p.pool_kernel > 1 && p.pool_kernel % 2 == 0)) {
    return Invalid(absl::StrCat(kName, ": pool_kernel ", p.pool_kernel, " must be 0, 1 or odd"));
  }
  if (p.cu_q == nullptr || p.q_positions == nullptr || p.lse == nullptr) {
    return Invalid(absl::StrCat(kName, ": cu_q/q_positions/lse is null"));
  }
  if ((static_cast<int64_t>(p.tables.max_num_kvs) + 63) / 64 > 65535) {
    return Invalid(absl::StrCat(kName, ": tables.max_num_kvs too large"));
  }
  RETURN_IF_ERROR(CheckRows(kName, "q", p.q, p.q_stride, true));
  const int64_t need = internal::WindowWorkspaceBytes(p.tables.num_seqs, p.tables.num_kv_heads,
                                                      group, p.tables.max_num_kvs);
  if (p.workspace_bytes < need || (need > 0 && p.workspace == nullptr)) {
    return Invalid(absl::StrCat(kName, ": workspace_bytes ", p.workspace_bytes, " < ", need));
  }
  if (reinterpret_cast<uintptr_t>(p.workspace) % 256 != 0) {
    return Invalid(absl::StrCat(kName, ": workspace is not 256-byte aligned"));
  }
  const cudaError_t err = p.cache.head_dim == 64
                              ? internal::LaunchWindowScores<64>(p, Stream(stream))
                              : internal::LaunchWindowScores<128>(p, Stream(stream));
  return FromCuda(err, kName);
}

absl::Status RmsNorm(const RmsNormParams& p, StreamHandle stream) {
  constexpr const char* kName = "RmsNorm";
  if (p.rows < 0 || p.dim <= 0 || p.dim % 8 != 0) {
    return Invalid(absl::StrCat(kName, ": rows ", p.rows, " / dim ", p.dim,
                                " (dim must be a positive multiple of 8)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckRows(kName, "x", p.x, p.x_stride, true));
  RETURN_IF_ERROR(CheckRows(kName, "weight", p.weight, 0, true));
  RETURN_IF_ERROR(CheckRows(kName, "residual", p.residual, p.residual_stride, false));
  RETURN_IF_ERROR(CheckRows(kName, "out", p.out, p.out_stride, true));
  return FromCuda(internal::LaunchRmsNorm(p, Stream(stream)), kName);
}

absl::Status Rope(const RopeParams& p, StreamHandle stream) {
  constexpr const char* kName = "Rope";
  if (p.num_tokens < 0 || p.num_heads < 0 || p.head_dim <= 0 || p.head_dim % 2 != 0 ||
      p.head_dim > 256) {
    return Invalid(absl::StrCat(kName, ": num_tokens ", p.num_tokens, " / num_heads ", p.num_heads,
                                " / head_dim ", p.head_dim, " out of range"));
  }
  if (p.num_tokens == 0 || p.num_heads == 0) return absl::OkStatus();
  if (p.x == nullptr || p.positions == nullptr || p.inv_freq == nullptr) {
    return Invalid(absl::StrCat(kName, ": x/positions/inv_freq is null"));
  }
  return FromCuda(internal::LaunchRope(p, Stream(stream)), kName);
}

absl::Status SwiGlu(const SwiGluParams& p, StreamHandle stream) {
  constexpr const char* kName = "SwiGlu";
  if (p.rows < 0 || p.dim < 0 || p.dim % 8 != 0) {
    return Invalid(
        absl::StrCat(kName, ": rows ", p.rows, " / dim ", p.dim, " (dim must be a multiple of 8)"));
  }
  if (p.rows == 0 || p.dim == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckRows(kName, "gate", p.gate, p.gate_stride, true));
  RETURN_IF_ERROR(CheckRows(kName, "up", p.up, p.up_stride, true));
  RETURN_IF_ERROR(CheckRows(kName, "out", p.out, p.out_stride, true));
  return FromCuda(internal::LaunchSwiGlu(p, Stream(stream)), kName);
}

absl::Status FillRandom(const FillRandomParams& p, StreamHandle stream) {
  if (p.n < 0 || (p.n > 0 && p.data == nullptr)) {
    return Invalid("FillRandom: data is null or n < 0");
  }
  return FromCuda(internal::LaunchFillRandom(p, Stream(stream)), "FillRandom");
}

int32_t CurrentDeviceSmCount() {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 0;
  }
  return sms;
}

}  // namespace kvc::kernels
