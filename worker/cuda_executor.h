// CudaExecutor: the CUDA backend of Executor (bf16 weights and KV cache, fp32 accumulation).
//
// Forward() runs a Llama-family model (Llama, Mistral, Qwen2; tied or untied LM head; q/k/v,
// o and MLP biases; llama3 RoPE) over a batch that may mix prefill (or prefill chunks) and
// decode sequences, with the same semantics as CpuExecutor (the reference): GEMMs through
// cuBLASLt (bf16 in, fp32 accumulate; q/k/v and gate/up biases in the epilogue), the kvc CUDA
// kernels for RoPE, SwiGLU, KV append, prefill attention (+ KV-Compress window scores) and paged
// decode attention (+ decode scores), and the executor's own helpers (executor_ops.h: embedding
// gather, RMSNorm of the residual stream, bias add, KV moves). Logits come back to the host as
// fp32.
//
// Precision: weights, GEMM inputs, q/k/v, the KV cache and attention outputs are bf16; the
// residual stream is fp32 (o_proj and down_proj accumulate into it through cuBLASLt's C = D,
// beta = 1) and RMSNorm reads it in fp32. Against fp32 references this is more accurate than
// transformers' bf16 forward, whose residual is rounded to bf16 after every block (kvc-ref,
// 519-token prompt, max |logit error| / max |logit| per row: 2.9e-2 here, 5.2e-2 transformers
// bf16; with a bf16 residual this executor measured 6.5e-2).
//
// Internally the batch is reordered into three contiguous groups (the output keeps batch order):
//   P   sequences with more than one token, or one token with pooled scores: prefill attention,
//       then window scores per run of equal (score_queries, pooling);
//   D0  one-token sequences without scores: decode attention;
//   D1  one-token sequences with score_queries >= 1 (unpooled): decode attention + scores.
//
// Head dims other than 64 / 128 (the kernels' closed set) are served by PADDING each head to
// kd = 64 or 128 at load: the q/k/v rows of real element r of a head go to padded element
// r (r < d/2) or kd/2 + r - d/2 (the rotate_half partner stays at distance kd/2, so the RoPE
// kernel runs with head_dim kd), the o_proj columns follow, and every pad element is zero, so
// dot products, softmax and outputs are those of the real head (scale stays 1/sqrt(d)). The
// intermediate size is padded to a multiple of 8 the same way (zero gate/up rows and down
// columns). The K/V pool therefore stores rows of kd elements.
//
// Ownership: shares the (immutable) host weights only during Create(); owns the device copies,
// the KV storage [num_blocks, block_size, kd] bf16 K and V, fp32 scores and int32 positions
// (indexed by block id; block ids and tables belong to the KvManager), a cuBLASLt handle, one
// stream and grow-only device/pinned scratch. Per Forward() the per-(sequence, kv_head) block
// tables of every layer are rebuilt on the host and uploaded whole (one pinned copy), not kept
// as an incremental device mirror yet.
//
// slot_reader() reads scores and positions from the device with a synchronous device->host
// copy per call (ReadBlock: one block, two copies); there is no host mirror yet.
//
// Synchronisation: Forward() and MoveKvs() return after the device work they queued finished
// (Forward waits for the logits anyway), so slot_reader() sees their results.
//
// Thread-safety: not thread-safe; one engine thread drives it. slot_reader() allows concurrent
// const reads (each read is an independent cudaMemcpy).
#ifndef KVC_WORKER_CUDA_EXECUTOR_H_
#define KVC_WORKER_CUDA_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/weights.h"
#include "worker/executor.h"

namespace kvc {

class CudaExecutor : public Executor {
 public:
  // INVALID_ARGUMENT when the model or the pool is outside what the kernels support (block_size
  // not in {8, 16, 32}, head_dim > 128, GQA group not in {1, 2, 4, 8}, hidden_size not a multiple
  // of 8, num_blocks < 1); UNAVAILABLE when there is no CUDA device `device`;
  // RESOURCE_EXHAUSTED when the weights or the pool do not fit in device memory.
  static absl::StatusOr<std::unique_ptr<CudaExecutor>> Create(
      std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size,
      int device = 0);

  // The same executor over random bf16 weights generated on the device from `seed` (benchmarks of
  // large architectures without a multi-GB host copy). Requires head_dim 64 or 128 and an
  // intermediate size that is a multiple of 8 (INVALID_ARGUMENT otherwise); other errors as Create.
  static absl::StatusOr<std::unique_ptr<CudaExecutor>> CreateRandom(const ModelConfig& config,
                                                                    uint64_t seed,
                                                                    int64_t num_blocks,
                                                                    int32_t block_size,
                                                                    int device = 0);

  // Device bytes one KV block takes for this model (K + V bf16 rows of the padded head_dim,
  // score and position): sizes the pool from a memory budget.
  static int64_t BytesPerBlock(const ModelConfig& config, int32_t block_size);

  ~CudaExecutor() override;
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

  const ModelConfig& config() const override;
  const KvLayout& layout() const override;
  std::string backend() const override { return "cuda"; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override;
  const KvSlotReader& slot_reader() const override;
  // Validates every move (INVALID_ARGUMENT naming the index of the first bad one, nothing
  // moved), then copies on the device in order: a list whose moves depend on each other (one
  // reads a slot an earlier one writes, or writes a slot an earlier one reads) is split into
  // several launches so the result is that of sequential moves.
  absl::Status MoveKvs(std::span<const KvMove> moves) override;
  void ForgetSequence(int64_t seq_id) override;
  // Sampling in Forward (cuda_executor_sampling.cc); false when KVC_DEVICE_SAMPLING=0.
  bool samples_tokens() const override;
  // Device-side KV-Compress selection + compaction (cuda_executor_eviction.cc).
  bool evicts_on_device() const override;
  absl::StatusOr<std::vector<int32_t>> EvictOnDevice(
      const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
      const EvictionConstraints& constraints) override;

  // Padded head dim of the K/V rows (64 or 128).
  int32_t storage_head_dim() const;
  // Test access: K (or V) row of a slot as floats, the real head_dim elements in the model's
  // order (padding removed). Synchronous device->host copy.
  absl::StatusOr<std::vector<float>> ReadKvRow(int32_t block, int32_t offset, bool value) const;

  // Decode-only steps replay captured CUDA graphs (default on; env KVC_CUDA_GRAPHS=0 turns
  // them off at Create). Tests and benchmarks compare both paths. Likewise KVC_TABLE_MIRROR=0
  // (whole tables uploaded every Forward), KVC_DEVICE_SAMPLING=0, KVC_DEVICE_EVICTION=0 and
  // KVC_GEMM_TUNE=0 (cuBLASLt's first heuristic for every GEMM, no timing of candidates).
  void set_use_cuda_graphs(bool on);
  // Counters for tests and benchmarks.
  struct Stats {
    int64_t forward_calls = 0;
    int64_t graph_captures = 0;
    int64_t graph_launches = 0;
    int64_t mirror_entries_uploaded = 0;  // block ids sent by incremental mirror updates
    int64_t full_table_uploads = 0;       // Forward calls that uploaded whole tables instead
    int64_t gemms_tuned = 0;              // decode-sized GEMM plans timed over their candidates
    int64_t gemms_tuned_off_first = 0;    // ... whose fastest was not cuBLASLt's first heuristic
    int64_t host_prep_ns = 0;  // Forward's host time before its first launch (GPU idle meanwhile)
    int64_t sync_wait_ns = 0;  // Forward's wait for the device after its launches
  };
  Stats stats() const;
  // Caps the block-table mirror's device arena (default 1 GiB); beyond it Forward uploads whole
  // tables each call. 0 disables the mirror (tests of the fallback path).
  void set_mirror_limit_bytes(int64_t bytes);

  struct State;  // device state (cuda_executor.cc)

 private:
  explicit CudaExecutor(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

}  // namespace kvc

#endif  // KVC_WORKER_CUDA_EXECUTOR_H_
