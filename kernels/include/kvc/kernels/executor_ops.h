// Host-only entry points of the CUDA executor's helper kernels (library kvc_executor_ops_cuda,
// built with the CUDA executor): row gather (embedding lookup, logits rows) and KV slot moves
// (compaction). Same conventions as cuda_kernels.h: every call validates its Params and returns
// INVALID_ARGUMENT naming the field before launching, launches asynchronously on `stream`,
// returns INTERNAL if the launch failed, never synchronises and never allocates.
//
// Thread-safety: reentrant; launches on one stream are ordered by the stream.
#ifndef KVC_KERNELS_EXECUTOR_OPS_H_
#define KVC_KERNELS_EXECUTOR_OPS_H_

#include "absl/status/status.h"
#include "kernels/include/kvc/kernels/executor_ops_params.h"

namespace kvc::kernels {

absl::Status GatherRows(const GatherRowsParams& p, StreamHandle stream);
absl::Status MoveKvSlots(const KvMoveParams& p, StreamHandle stream);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_EXECUTOR_OPS_H_
