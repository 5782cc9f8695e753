// Host side of the token-sampling kernel: validation and cudaError_t -> absl::Status.
#include "kernels/include/kvc/kernels/sampling.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/sampling_launch.h"

namespace kvc::kernels {

int64_t SampleTokensWorkspaceBytes(int32_t rows, int32_t vocab) { return 0; }

absl::Status SampleTokens(const SampleTokensParams& p, StreamHandle stream) {
  if (p.rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("SampleTokens: rows ", p.rows, " < 0"));
  }
  if (p.vocab < 1 || p.vocab > kSampleTokensMaxVocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SampleTokens: vocab ", p.vocab, " out of range [1, ", kSampleTokensMaxVocab, "]"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.logits == nullptr) return absl::InvalidArgumentError("SampleTokens: logits is null");
  if (p.out_tokens == nullptr) {
    return absl::InvalidArgumentError("SampleTokens: out_tokens is null");
  }
  if (p.logits_stride != 0 && p.logits_stride < p.vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTokens: logits_stride ", p.logits_stride, " is below vocab ", p.vocab));
  }
  const int64_t need = SampleTokensWorkspaceBytes(p.rows, p.vocab);
  if (p.workspace_bytes < need || (need > 0 && p.workspace == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("SampleTokens: workspace_bytes ",
                                                   p.workspace_bytes, " < ", need,
                                                   " (SampleTokensWorkspaceBytes) or null"));
  }
  const cudaError_t err = internal::LaunchSampleTokens(p, reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("SampleTokens: CUDA launch failed: ", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels
