// Host-only entry points of the CUDA kernels (library kvc_kernels_cuda; built when
// KVC_CUDA_ENABLED). No CUDA types: streams are StreamHandle (= cudaStream_t), device buffers are
// raw pointers in the by-value Params structs of params.h, bf16 is kvc::kernels::Bf16.
//
// Every call validates its Params (closed set of head_dim / block_size / group sizes, non-null
// pointers, 16-byte alignment, workspace size) and returns INVALID_ARGUMENT naming the field
// before anything is launched; it then launches asynchronously on `stream` and returns INTERNAL
// if the launch failed. Calls never synchronise and never allocate device memory: workspaces
// are caller-owned (sized by the *WorkspaceBytes / Make*Plan helpers, which are pure host
// functions). Device contents (e.g. num_kvs entries) are not validated; see params.h.
//
// Thread-safety: all functions are reentrant; launches on one stream are ordered by the stream.
#ifndef KVC_KERNELS_CUDA_KERNELS_H_
#define KVC_KERNELS_CUDA_KERNELS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/include/kvc/kernels/params.h"

namespace kvc::kernels {

// ---- KV cache ---------------------------------------------------------------------------------
absl::Status AppendKv(const KvAppendParams& p, StreamHandle stream);

// ---- decode attention -------------------------------------------------------------------------
// Chooses split-K for a decode batch: enough CTAs to fill `num_sms` multiprocessors (about 4
// per SM), chunks of at least 128 KVs (multiples of 16). Pure function of its arguments.
DecodeAttentionPlan MakeDecodeAttentionPlan(int32_t num_seqs, int32_t num_kv_heads,
                                            int32_t num_q_heads, int32_t head_dim,
                                            int32_t max_num_kvs, int32_t num_sms,
                                            bool accumulate_scores);
// Bytes of workspace a decode launch with this split needs (partials; logits when scoring).
int64_t DecodeAttentionWorkspaceBytes(int32_t num_seqs, int32_t num_kv_heads, int32_t num_q_heads,
                                      int32_t head_dim, int32_t num_splits, int32_t chunk_size,
                                      bool accumulate_scores);
absl::Status DecodeAttention(const DecodeAttentionParams& p, StreamHandle stream);

// ---- prefill attention ------------------------------------------------------------------------
absl::Status PrefillAttention(const PrefillAttentionParams& p, StreamHandle stream);

// ---- window scores ----------------------------------------------------------------------------
int64_t WindowScoreWorkspaceBytes(int32_t num_seqs, int32_t num_kv_heads, int32_t num_q_heads,
                                  int32_t max_num_kvs);
absl::Status AccumulateWindowScores(const WindowScoreParams& p, StreamHandle stream);

// ---- elementwise ------------------------------------------------------------------------------
absl::Status RmsNorm(const RmsNormParams& p, StreamHandle stream);
absl::Status Rope(const RopeParams& p, StreamHandle stream);
absl::Status SwiGlu(const SwiGluParams& p, StreamHandle stream);
absl::Status FillRandom(const FillRandomParams& p, StreamHandle stream);

// Number of multiprocessors of the current device (0 if there is none).
int32_t CurrentDeviceSmCount();

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_CUDA_KERNELS_H_
