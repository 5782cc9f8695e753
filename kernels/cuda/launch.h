// Internal: raw launchers of the CUDA kernels, called by cuda_kernels.cc after validation.
// Only cuda_runtime_api.h types here (host compiler and nvcc both include this file; no Abseil).
// Each launcher assumes validated Params and returns the launch's cudaError_t. Templates are
// instantiated for the closed set head_dim {64, 128} in the *.cu files; block size and group
// size are runtime values (powers of two: shifts and masks, not templates).
#ifndef KVC_KERNELS_CUDA_LAUNCH_H_
#define KVC_KERNELS_CUDA_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/include/kvc/kernels/params.h"

namespace kvc::kernels::internal {

// Workspace layout of decode attention (all fp32, each region 256-byte aligned):
//   lse2    [S*H*G]                        unused (the score passes derive the LSE in-kernel)
//   part_o  [S*H*splits*G*head_dim]        per-split normalised partial outputs (splits > 1)
//   part_ml [S*H*splits*G*2]               per-split (max, sum), log2 domain   (splits > 1)
//   logits  [S*H*splits*G*chunk]           scaled log2 logits                   (scores)
struct DecodeWorkspaceLayout {
  int64_t lse2 = 0, part_o = 0, part_ml = 0, logits = 0, total = 0;  // byte offsets, size
};
inline DecodeWorkspaceLayout DecodeWorkspace(int32_t num_seqs, int32_t num_kv_heads, int32_t group,
                                             int32_t head_dim, int32_t num_splits,
                                             int32_t chunk_size, bool scores) {
  auto align = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t rows = static_cast<int64_t>(num_seqs) * num_kv_heads * group;  // query heads
  DecodeWorkspaceLayout w;
  int64_t at = 0;
  w.lse2 = at;
  at += align(rows * 4);
  w.part_o = at;
  if (num_splits > 1) at += align(rows * num_splits * head_dim * 4);
  w.part_ml = at;
  if (num_splits > 1) at += align(rows * num_splits * 2 * 4);
  w.logits = at;
  if (scores) at += align(rows * num_splits * static_cast<int64_t>(chunk_size) * 4);
  w.total = at;
  return w;
}

// Window-score workspace: A [S*H*G, max_num_kvs] fp32 (per query head, before pooling).
inline int64_t WindowWorkspaceBytes(int32_t num_seqs, int32_t num_kv_heads, int32_t group,
                                    int32_t max_num_kvs) {
  return static_cast<int64_t>(num_seqs) * num_kv_heads * group * max_num_kvs * 4;
}

// Decode CTAs (128 threads) resident per SM, from the compiler's resource report (sm_90a:
// 139 registers at head_dim 128, 79 at 64); the split planner aims at about two full waves.
constexpr int DecodeCtasPerSm(int head_dim) { return head_dim <= 64 ? 6 : 3; }

cudaError_t LaunchAppendKv(const KvAppendParams& p, cudaStream_t stream);

template <int kHeadDim>
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream);

template <int kHeadDim>
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream);

template <int kHeadDim>
cudaError_t LaunchWindowScores(const WindowScoreParams& p, cudaStream_t stream);

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream);
cudaError_t LaunchRope(const RopeParams& p, cudaStream_t stream);
cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream);
cudaError_t LaunchFillRandom(const FillRandomParams& p, cudaStream_t stream);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_CUDA_LAUNCH_H_
