// Host side of the device-side KV-Compress eviction: Params validation, the workspace size and
// cudaError_t -> absl::Status. The kernels are in eviction.cu.
#include "kernels/include/kvc/kernels/eviction.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/eviction_launch.h"

namespace kvc::kernels {
namespace {

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("KvCompressEvict: ", what));
}

bool Aligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

int64_t KvCompressWorkspaceBytes(int32_t num_heads, int32_t max_num_kvs) {
  return internal::KvCompressWorkspace(num_heads, max_num_kvs).total;
}

absl::Status KvCompressEvict(const KvCompressParams& p, StreamHandle stream) {
  const PagedKvCache& c = p.cache;
  const HeadTables& t = p.tables;
  if (t.num_seqs != 1) {
    return Invalid(absl::StrCat("tables.num_seqs must be 1 (one sequence), got ", t.num_seqs));
  }
  if (t.num_kv_heads < 1 || t.num_kv_heads > 65535) {
    return Invalid(absl::StrCat("tables.num_kv_heads (heads of the sequence) ", t.num_kv_heads,
                                " not in [1, 65535]"));
  }
  if (t.max_num_kvs < 0) {
    return Invalid(absl::StrCat("tables.max_num_kvs must be >= 0, got ", t.max_num_kvs));
  }
  if (t.block_ids == nullptr || t.table_offsets == nullptr || t.num_kvs == nullptr) {
    return Invalid("tables.block_ids/table_offsets/num_kvs is null");
  }
  if (c.block_size <= 0) {
    return Invalid(absl::StrCat("cache.block_size must be > 0, got ", c.block_size));
  }
  if (c.num_blocks <= 0) return Invalid("cache.num_blocks must be > 0");
  if (c.head_dim <= 0 || c.head_dim % 8 != 0) {
    return Invalid(
        absl::StrCat("cache.head_dim ", c.head_dim, " must be a positive multiple of 8"));
  }
  if (c.k == nullptr || c.v == nullptr || c.scores == nullptr || c.positions == nullptr) {
    return Invalid("cache.k/v/scores/positions is null");
  }
  if (!Aligned(c.k, 16) || !Aligned(c.v, 16)) {
    return Invalid("cache.k/v is not 16-byte aligned");
  }
  if (p.num_tokens < 0) {
    return Invalid(absl::StrCat("num_tokens must be >= 0, got ", p.num_tokens));
  }
  if (p.evict_blocks < 0) {
    return Invalid(absl::StrCat("evict_blocks must be >= 0, got ", p.evict_blocks));
  }
  if (p.protected_window < 0 || p.sink_tokens < 0 || p.min_kvs_per_head < 0) {
    return Invalid(
        absl::StrCat("protected_window, sink_tokens and min_kvs_per_head must be >= 0, got ",
                     p.protected_window, ", ", p.sink_tokens, ", ", p.min_kvs_per_head));
  }
  if (p.out == nullptr) return Invalid("out is null");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const size_t out_bytes = sizeof(int32_t) * (static_cast<size_t>(t.num_kv_heads) + 1);
  if (p.evict_blocks == 0 || t.max_num_kvs == 0) {
    const cudaError_t err = cudaMemsetAsync(p.out, 0, out_bytes, s);
    if (err != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat("KvCompressEvict: cudaMemsetAsync failed: ", cudaGetErrorString(err)));
    }
    return absl::OkStatus();
  }
  const int64_t need = KvCompressWorkspaceBytes(t.num_kv_heads, t.max_num_kvs);
  if (p.workspace == nullptr || !Aligned(p.workspace, 256)) {
    return Invalid("workspace is null or not 256-byte aligned");
  }
  if (p.workspace_bytes < need) {
    return Invalid(absl::StrCat("workspace_bytes ", p.workspace_bytes, " < ", need,
                                " (KvCompressWorkspaceBytes)"));
  }
  cudaError_t err = cudaMemsetAsync(p.out, 0, out_bytes, s);
  if (err == cudaSuccess) err = internal::LaunchKvCompressEvict(p, s);
  if (err != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("KvCompressEvict: CUDA launch failed: ", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels
