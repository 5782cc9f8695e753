// Sampling inside CudaExecutor::Forward (see cuda_executor_internal.h, executor.h).
#include "worker/cuda_executor.h"
#include "worker/cuda_executor_internal.h"

namespace kvc {

absl::Status CudaExecutor::State::PrepareSampling(const ForwardBatch& batch,
                                                  const std::vector<int32_t>& row_of_seq) {
  sample_rows = 0;
  sample_on_host = false;
  for (const ForwardSequence& f : batch.seqs) {
    if (f.sample) {
      return absl::UnimplementedError("CudaExecutor: sampling in Forward is not available yet");
    }
  }
  return absl::OkStatus();
}

absl::Status CudaExecutor::State::EnqueueSampling(int32_t logits_rows) { return absl::OkStatus(); }

absl::Status CudaExecutor::State::DownloadSampledTokens() { return absl::OkStatus(); }

absl::Status CudaExecutor::State::FinishSampledTokens(const ForwardBatch& batch,
                                                      const std::vector<int32_t>& row_of_seq,
                                                      ForwardOutput* out) {
  out->tokens.clear();
  return absl::OkStatus();
}

}  // namespace kvc
