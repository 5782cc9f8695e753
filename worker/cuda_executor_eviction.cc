// CudaExecutor::EvictOnDevice: device-side KV-Compress selection and compaction of one sequence
// (Executor::EvictOnDevice in executor.h; the kernels are kernels/include/kvc/kernels/eviction.h).
//
// One call: validate the tables (the planner's checks), stage the sequence's table offsets,
// counts and block ids in pinned memory and upload them with one copy, queue the eviction
// kernels on the executor's stream (which also run the compaction moves), copy the L·H counts
// and the error word back with one copy, and wait. The stream is idle on entry and on return
// (Forward and MoveKvs also return idle), so growing the buffers here is safe.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/include/kvc/kernels/eviction.h"
#include "worker/cuda_executor.h"
#include "worker/cuda_executor_internal.h"

namespace kvc {

using cuda_internal::CudaError;
using cuda_internal::RoundUp;

bool CudaExecutor::evicts_on_device() const { return s_->device_eviction; }

absl::StatusOr<std::vector<int32_t>> CudaExecutor::EvictOnDevice(
    const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
    const EvictionConstraints& constraints) {
  State& s = *s_;
  if (evict_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvictOnDevice: evict_blocks must be >= 0, got ", evict_blocks));
  }
  RETURN_IF_ERROR(ValidateEvictionInput(s.layout, tables, num_tokens, constraints));
  const int32_t num_heads = s.layout.heads_per_seq();
  std::vector<int32_t> k(num_heads, 0);
  if (evict_blocks == 0) return k;

  int32_t max_num_kvs = 0;
  int64_t total_blocks = 0;
  for (const HeadBlockTable& h : tables.heads) {
    max_num_kvs = std::max(max_num_kvs, h.num_kvs);
    total_blocks += static_cast<int64_t>(h.blocks.size());
  }
  if (max_num_kvs == 0) return k;

  // Staging layout (int32): offsets [H] | num_kvs [H] | block ids [total_blocks] | out [H + 1].
  const int64_t ids_at = 2 * static_cast<int64_t>(num_heads);
  const int64_t out_at = RoundUp(ids_at + std::max<int64_t>(total_blocks, 1), 64);
  const int64_t words = out_at + num_heads + 1;
  KVC_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device), "cudaSetDevice");
  s.reader.Invalidate();  // scores and positions move
  RETURN_IF_ERROR(s.evict_host.Reserve(words * sizeof(int32_t), "eviction tables (host)"));
  RETURN_IF_ERROR(s.evict_tables.Reserve(words * sizeof(int32_t), "eviction tables"));
  const int64_t ws_bytes = kernels::KvCompressWorkspaceBytes(num_heads, max_num_kvs);
  RETURN_IF_ERROR(s.evict_ws.Reserve(static_cast<size_t>(ws_bytes), "eviction workspace"));

  int32_t* host = s.evict_host.as<int32_t>();
  int32_t next = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const HeadBlockTable& head = tables.heads[h];
    host[h] = next;
    host[num_heads + h] = head.num_kvs;
    std::copy(head.blocks.begin(), head.blocks.end(), host + ids_at + next);
    next += static_cast<int32_t>(head.blocks.size());
  }
  int32_t* dev = s.evict_tables.as<int32_t>();
  KVC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev, host, (ids_at + total_blocks) * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, s.stream),
                           "EvictOnDevice: upload of the tables");

  kernels::KvCompressParams p;
  p.cache = s.Cache();
  p.tables.table_offsets = dev;
  p.tables.num_kvs = dev + num_heads;
  p.tables.block_ids = dev + ids_at;
  p.tables.num_seqs = 1;
  p.tables.num_kv_heads = num_heads;
  p.tables.max_num_kvs = max_num_kvs;
  p.num_tokens = num_tokens;
  p.evict_blocks = evict_blocks;
  p.protected_window = constraints.protected_window;
  p.sink_tokens = constraints.sink_tokens;
  p.min_kvs_per_head = constraints.min_kvs_per_head;
  p.out = dev + out_at;
  p.workspace = s.evict_ws.as<void>();
  p.workspace_bytes = ws_bytes;
  const absl::Status launched = kernels::KvCompressEvict(p, s.handle());
  if (!launched.ok()) {
    cudaStreamSynchronize(s.stream);  // leave the stream idle, as every call does
    return launched;
  }
  KVC_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host + out_at, dev + out_at, (num_heads + 1) * sizeof(int32_t),
                      cudaMemcpyDeviceToHost, s.stream),
      "EvictOnDevice: download of the counts");
  KVC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream), "EvictOnDevice");
  const int32_t error = host[out_at + num_heads];
  if (error != 0) {
    return absl::InternalError(
        absl::StrCat("EvictOnDevice: the eviction kernels reported error bits ", error,
                     " (see KvCompressError in kernels/include/kvc/kernels/eviction_params.h)"));
  }
  std::copy(host + out_at, host + out_at + num_heads, k.begin());
  return k;
}

}  // namespace kvc
