// Parameter structs of the CUDA kernels (POD only: nvcc includes this header, so no Abseil, no
// CUDA types). The entry points that take them are in cuda_kernels.h; the memory layout is
// documented in docs/design/kernels.md.
//
// Ownership: every pointer is a caller-owned DEVICE pointer unless its comment says otherwise;
// a kernel only reads or writes through it during the launch's lifetime on the given stream.
// Shapes are in elements; `*_stride` = elements between consecutive rows, so a kernel can read
// or write a column slice of a wider buffer (e.g. q, k and v inside one fused QKV buffer).
//
// Supported configurations (closed set; anything else is INVALID_ARGUMENT):
//   head_dim   {64, 128}      block_size {8, 16, 32}
//   group size G = num_q_heads / num_kv_heads in {1, 2, 4, 8}
// bf16 row pointers and strides must be 16-byte aligned (pointer % 16 == 0, stride % 8 == 0).
#ifndef KVC_KERNELS_PARAMS_H_
#define KVC_KERNELS_PARAMS_H_

#include <cstdint>

#include "kernels/include/kvc/kernels/bf16.h"

struct CUstream_st;  // = cudaStream_t's pointee; forward-declared so no CUDA header is needed.

namespace kvc::kernels {

// A CUDA stream (nullptr = the legacy default stream).
using StreamHandle = CUstream_st*;

// The paged KV storage of one model (all layers share one pool of block ids). Block `b` holds
// block_size KVs of ONE (sequence, layer, kv_head); KV slot `i` of block `b` is element
// `b * block_size + i` of scores/positions and row `b * block_size + i` of k/v.
struct PagedKvCache {
  Bf16* k = nullptr;             // [num_blocks, block_size, head_dim]  (RoPE already applied)
  Bf16* v = nullptr;             // [num_blocks, block_size, head_dim]
  float* scores = nullptr;       // [num_blocks, block_size]  KV-Compress eviction score
  int32_t* positions = nullptr;  // [num_blocks, block_size]  absolute token position of the KV
  int64_t num_blocks = 0;
  int32_t block_size = 16;
  int32_t head_dim = 128;
};

// Per-head block tables of one layer for a batch of sequences, CSR-style. Head (s, h) -- sequence
// s of the batch, kv head h -- owns the block list
//   block_ids[table_offsets[s * num_kv_heads + h] + j],  j < ceil(num_kvs[s * num_kv_heads + h] /
//   b)
// and its logical slot i < num_kvs lives at block list[i / b], offset i % b. Heads have their own
// lengths (compression); lists may have spare capacity after their last used entry.
struct HeadTables {
  const int32_t* block_ids = nullptr;      // flat block-id array
  const int32_t* table_offsets = nullptr;  // [num_seqs * num_kv_heads]
  const int32_t* num_kvs = nullptr;        // [num_seqs * num_kv_heads], each in [0, max_num_kvs]
  int32_t num_seqs = 0;
  int32_t num_kv_heads = 0;
  // Host-known upper bound of every num_kvs entry (sizes grids and workspaces). A device entry
  // above it is clamped to it (memory-safe, but the result is then wrong).
  int32_t max_num_kvs = 0;
};

// ---- KV append --------------------------------------------------------------------------------
// Scatters the K/V of new tokens (RoPE applied) into each head's tail slots, stores each token's
// position and zeroes its score. The tables ALREADY count the new tokens (the KvManager reserved
// room first): new token i of sequence s goes to logical slot num_kvs[s, h] - n_s + i of every
// kv head h, where n_s = cu_tokens[s + 1] - cu_tokens[s].
struct KvAppendParams {
  PagedKvCache cache;
  HeadTables tables;
  int32_t num_tokens = 0;                    // = cu_tokens[num_seqs]
  const int32_t* cu_tokens = nullptr;        // [num_seqs + 1] token offsets, cu_tokens[0] = 0
  const int32_t* token_positions = nullptr;  // [num_tokens]
  const Bf16* k = nullptr;                   // token t, kv head h at k[t * k_stride + h * head_dim]
  int64_t k_stride = 0;                      // 0 = num_kv_heads * head_dim
  const Bf16* v = nullptr;
  int64_t v_stride = 0;  // 0 = num_kv_heads * head_dim
};

// ---- decode attention -------------------------------------------------------------------------
// One query token per sequence (the newest token: every KV in a head's list is visible).
// Query head qh reads kv head qh / G. One CTA per (sequence, kv head, split) serves the G query
// heads of the group from one K/V load; split-K chunks are merged by a second kernel.
//   out[s, qh] = softmax(scale * q[s, qh] . K_h^T) V_h,   lse[s, qh] = log sum exp(scale q.k)
// With accumulate_scores: scores[slot] += sum_{g in group} p_g(slot)^2 for every KV slot of
// every head, p the exact normalised probability (after all splits are merged).
struct DecodeAttentionParams {
  PagedKvCache cache;
  HeadTables tables;
  int32_t num_q_heads = 0;
  float scale = 0.0f;       // usually 1 / sqrt(head_dim)
  const Bf16* q = nullptr;  // seq s, head qh at q[s * q_stride + qh * head_dim]
  int64_t q_stride = 0;     // 0 = num_q_heads * head_dim
  Bf16* out = nullptr;      // seq s, head qh at out[s * out_stride + qh * head_dim]
  int64_t out_stride = 0;   // 0 = num_q_heads * head_dim
  float* lse = nullptr;     // optional [num_seqs, num_q_heads]; -inf for an empty head
  bool accumulate_scores = false;
  // From MakeDecodeAttentionPlan (or chosen by the caller): KVs of a head are cut into chunks of
  // chunk_size (a multiple of 16); a head uses ceil(num_kvs / chunk_size) <= num_splits CTAs.
  int32_t num_splits = 1;
  int32_t chunk_size = 0;
  void* workspace = nullptr;  // >= DecodeAttentionWorkspaceBytes(...), 256-byte aligned
  int64_t workspace_bytes = 0;
};

struct DecodeAttentionPlan {
  int32_t num_splits = 1;
  int32_t chunk_size = 0;
  int64_t workspace_bytes = 0;
};

// ---- prefill attention ------------------------------------------------------------------------
// Variable-length batch; sequence s has queries cu_q[s] .. cu_q[s+1]-1. Query t (head qh) sees
// KV slot i of its head iff positions[slot] <= q_positions[t] (causal by stored position: still
// right after compaction, chunked prefill and recompute). A query that sees no KV gets a zero
// output and lse = -inf. Flash-style (online softmax, tensor cores), K/V read from the pages.
struct PrefillAttentionParams {
  PagedKvCache cache;
  HeadTables tables;
  int32_t num_q_heads = 0;
  float scale = 0.0f;
  int32_t num_tokens = 0;                // = cu_q[num_seqs]
  int32_t max_q_len = 0;                 // host-known max over sequences of cu_q[s+1] - cu_q[s]
  const int32_t* cu_q = nullptr;         // [num_seqs + 1]
  const int32_t* q_positions = nullptr;  // [num_tokens]
  const Bf16* q = nullptr;               // token t, head qh at q[t * q_stride + qh * head_dim]
  int64_t q_stride = 0;                  // 0 = num_q_heads * head_dim
  Bf16* out = nullptr;                   // token t, head qh at out[t * out_stride + qh * head_dim]
  int64_t out_stride = 0;                // 0 = num_q_heads * head_dim
  float* lse = nullptr;                  // optional [num_tokens, num_q_heads] (natural log)
};

// ---- window scores (KV-Compress prefill scores) -----------------------------------------------
// For each sequence s, W = its last w' = min(window, n_s) queries (of this call's tokens). For
// every KV k of head (s, h) and query head j of its group:
//   A_j(k) = sum_{q in W, pos(k) <= pos(q)} exp(scale q_j.k - lse[q, j])^2
//   A_j <- max-pool along slot order, kernel pool_kernel, stride 1, pad pool_kernel/2
//   scores[slot(k)] += sum_j A_j(k)
// lse is the prefill attention's output for the same queries. Without materialising the full
// attention matrix and without repeating KV heads (the G query heads share each K load).
struct WindowScoreParams {
  PagedKvCache cache;
  HeadTables tables;
  int32_t num_q_heads = 0;
  float scale = 0.0f;
  int32_t window = 32;                   // w >= 1
  int32_t pool_kernel = 7;               // odd >= 1; 0 or 1 = no pooling
  const int32_t* cu_q = nullptr;         // [num_seqs + 1]
  const int32_t* q_positions = nullptr;  // [num_tokens]
  const Bf16* q = nullptr;
  int64_t q_stride = 0;        // 0 = num_q_heads * head_dim
  const float* lse = nullptr;  // [num_tokens, num_q_heads]
  void* workspace = nullptr;   // >= WindowScoreWorkspaceBytes(...), 256-byte aligned
  int64_t workspace_bytes = 0;
};

// ---- elementwise ------------------------------------------------------------------------------
// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight (fp32 math). With `residual` (fused add):
// residual[r] += x[r] first (stored back as bf16) and the norm is of the updated residual.
// out may alias x.
struct RmsNormParams {
  int32_t rows = 0;
  int32_t dim = 0;  // multiple of 8
  float eps = 1e-6f;
  const Bf16* x = nullptr;
  int64_t x_stride = 0;          // 0 = dim
  const Bf16* weight = nullptr;  // [dim]
  Bf16* residual = nullptr;      // optional
  int64_t residual_stride = 0;   // 0 = dim
  Bf16* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
};

// In-place RoPE (HF rotate_half / "neox" pairing of i and i + head_dim/2) of num_heads heads at
// x[t * stride + first_head_offset + h * head_dim]: (a, b) -> (a cos - b sin, b cos + a sin),
// angle = positions[t] * inv_freq[i] as one fp32 product (inv_freq from cpu::RopeInvFreq,
// llama3 scaling included). q and k heads that are adjacent in a QKV row go in one launch.
struct RopeParams {
  int32_t num_tokens = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;  // even, <= 256
  Bf16* x = nullptr;
  int64_t stride = 0;
  int64_t first_head_offset = 0;
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [head_dim / 2]
};

// out[r, i] = silu(gate[r, i]) * up[r, i] (fp32 math). out may alias gate.
struct SwiGluParams {
  int32_t rows = 0;
  int32_t dim = 0;
  const Bf16* gate = nullptr;
  int64_t gate_stride = 0;  // 0 = dim
  const Bf16* up = nullptr;
  int64_t up_stride = 0;  // 0 = dim
  Bf16* out = nullptr;
  int64_t out_stride = 0;  // 0 = dim
};

// Fills n bf16 values with a deterministic pseudo-random uniform(-scale, scale) sequence of
// `seed` (benchmarks, --random-weights).
struct FillRandomParams {
  Bf16* data = nullptr;
  int64_t n = 0;
  uint64_t seed = 0;
  float scale = 1.0f;
};

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_PARAMS_H_
