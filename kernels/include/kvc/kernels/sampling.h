// Host-only entry point of the CUDA token-sampling kernel (library kvc_sampling_cuda): one next
// token per row of fp32 logits, on the device, so that only the token ids have to come back to
// the host each decode step.
//
// Contract of SampleTokens(p, stream):
//   * Row r's token is EXACTLY what the CPU reference gives,
//       SampleTokenWithUniform(logits row r, {temperature[r], top_p[r], top_k[r]},
//                              CounterUniform(seed[r], counter[r]))        (kernels/cpu/sampling.h)
//     greedy when !(temperature > 0) or top_k == 1 (largest logit, lowest index on ties, NaN as
//     -inf, 0 for an all -inf / NaN row), else temperature softmax, top-k (ties: lower index
//     first), top-p (smallest prefix of the sorted order reaching the mass), one draw. Weights
//     are computed in fp64 like the CPU's; the two can differ only when u * total lies within
//     fp64 rounding (~1e-15 relative) of a CDF boundary.
//   * Validates p (INVALID_ARGUMENT naming the field) before launching; the per-row options are
//     device data and are not validated (validate them with ValidateSamplingOptions on the host).
//   * Launches asynchronously on `stream` (one kernel; grid = rows, 512 threads), returns
//     INTERNAL if the launch failed, never synchronises and never allocates. The tokens are in
//     p.out_tokens once the stream reaches this point: copy them back on the same stream.
//   * rows == 0 is a no-op.
// Cost (one thread block per row): greedy rows read their logits once; temperature-only rows
// twice; top-k / top-p rows a few times more (radix-style threshold selects, no sort; see
// kernels/cuda/sampling.cu).
//
// Thread-safety: reentrant; launches on one stream are ordered by the stream.
#ifndef KVC_KERNELS_SAMPLING_H_
#define KVC_KERNELS_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/include/kvc/kernels/params.h"
#include "kernels/include/kvc/kernels/sampling_params.h"

namespace kvc::kernels {

// Bytes of device scratch SampleTokens needs for `rows` x `vocab` (pass a buffer at least this
// large in p.workspace / p.workspace_bytes). Currently 0 (all scratch lives in shared memory):
// callers should still ask, so a later version can use device scratch without API changes.
int64_t SampleTokensWorkspaceBytes(int32_t rows, int32_t vocab);

absl::Status SampleTokens(const SampleTokensParams& p, StreamHandle stream);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_SAMPLING_H_
