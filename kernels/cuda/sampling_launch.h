// Internal: raw launcher of the token-sampling kernel (sampling.cu), called by sampling.cc after
// validation. No Abseil (nvcc includes this file).
#ifndef KVC_KERNELS_CUDA_SAMPLING_LAUNCH_H_
#define KVC_KERNELS_CUDA_SAMPLING_LAUNCH_H_

#include <cuda_runtime_api.h>

#include "kernels/include/kvc/kernels/sampling_params.h"

namespace kvc::kernels::internal {

cudaError_t LaunchSampleTokens(const SampleTokensParams& p, cudaStream_t stream);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_CUDA_SAMPLING_LAUNCH_H_
