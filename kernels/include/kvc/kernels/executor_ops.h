// Host-only entry points of the CUDA executor's helper kernels (library kvc_executor_ops_cuda,
// built with the CUDA executor): row gathers (embedding lookup, logits rows), the fp32
// residual-stream RMSNorm and bias add, and KV slot moves (compaction). Same conventions as
// cuda_kernels.h: every call validates its Params and returns INVALID_ARGUMENT naming the field
// before launching, launches asynchronously on `stream`, returns INTERNAL if the launch failed,
// never synchronises and never allocates.
//
// Thread-safety: reentrant; launches on one stream are ordered by the stream.
#ifndef KVC_KERNELS_EXECUTOR_OPS_H_
#define KVC_KERNELS_EXECUTOR_OPS_H_

#include "absl/status/status.h"
#include "kernels/include/kvc/kernels/executor_ops_params.h"

namespace kvc::kernels {

absl::Status GatherRowsF32(const GatherRowsF32Params& p, StreamHandle stream);
absl::Status RmsNormF32(const RmsNormF32Params& p, StreamHandle stream);
absl::Status AddBiasF32(const AddBiasF32Params& p, StreamHandle stream);
absl::Status MoveKvSlots(const KvMoveParams& p, StreamHandle stream);
absl::Status GatherSlotMeta(const GatherSlotMetaParams& p, StreamHandle stream);
absl::Status ScatterInt32(const ScatterInt32Params& p, StreamHandle stream);
absl::Status FillRandomBf16(const FillRandomBf16Params& p, StreamHandle stream);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EXECUTOR_OPS_H_
