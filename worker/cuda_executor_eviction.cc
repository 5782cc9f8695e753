// CudaExecutor::EvictOnDevice: device-side KV-Compress selection and compaction (see executor.h).
#include "worker/cuda_executor.h"
#include "worker/cuda_executor_internal.h"

namespace kvc {

bool CudaExecutor::evicts_on_device() const { return false; }

absl::StatusOr<std::vector<int32_t>> CudaExecutor::EvictOnDevice(
    const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
    const EvictionConstraints& constraints) {
  return absl::UnimplementedError("CudaExecutor::EvictOnDevice: not implemented yet");
}

}  // namespace kvc
