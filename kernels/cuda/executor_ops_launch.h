// Internal: raw launchers of the executor helper kernels (executor_ops.cu), called by
// executor_ops.cc after validation. No Abseil (nvcc includes this file).
#ifndef KVC_KERNELS_CUDA_EXECUTOR_OPS_LAUNCH_H_
#define KVC_KERNELS_CUDA_EXECUTOR_OPS_LAUNCH_H_

#include <cuda_runtime_api.h>

#include "kernels/include/kvc/kernels/executor_ops_params.h"

namespace kvc::kernels::internal {

cudaError_t LaunchGatherRowsF32(const GatherRowsF32Params& p, cudaStream_t stream);
cudaError_t LaunchRmsNormF32(const RmsNormF32Params& p, cudaStream_t stream);
cudaError_t LaunchAddBiasF32(const AddBiasF32Params& p, cudaStream_t stream);
cudaError_t LaunchMoveKvSlots(const KvMoveParams& p, cudaStream_t stream);
cudaError_t LaunchGatherSlotMeta(const GatherSlotMetaParams& p, cudaStream_t stream);
cudaError_t LaunchScatterInt32(const ScatterInt32Params& p, cudaStream_t stream);
cudaError_t LaunchFillRandomBf16(const FillRandomBf16Params& p, cudaStream_t stream);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_CUDA_EXECUTOR_OPS_LAUNCH_H_
