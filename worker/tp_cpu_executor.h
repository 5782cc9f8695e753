// TensorParallelCpuExecutor: the CPU backend run as a tensor-parallel group of N ranks (one
// thread per rank, each with its own weight shard and its own KV storage), connected by a
// Communicator (worker/communicator.h; in-process here, NCCL for the CUDA backend). It is the
// reference for the multi-GPU executor: same sharding, same collectives, same ownership rules.
//
// Sharding (Megatron-LM): with H KV heads, rank r owns KV heads [r·H/N, (r+1)·H/N) of every layer
// and their query groups (H % N == 0 is required).
//   embeddings   vocab-parallel: rank r holds rows [r·V', (r+1)·V') (V' = ceil(V/N)), looks up
//                the ids it holds (zeros for the others); an all-reduce sums the rows.
//   q/k/v_proj   column-parallel (rows of the HF [out, in] matrices for its heads, with biases).
//   o_proj       row-parallel (its heads' input columns); rank 0 adds the residual and the bias,
//                the others their partial product only; an all-reduce (rank order) gives the
//                new residual stream on every rank.
//   gate/up_proj column-parallel over intermediate_size (split as evenly as possible);
//   down_proj    row-parallel + all-reduce, like o_proj.
//   norms        replicated; every rank normalises the (identical) residual stream itself.
//   lm_head      vocab-parallel (tied: the embedding shard); an all-gather assembles the logits.
// Two all-reduces of [tokens, hidden] per layer, one at the embedding, one all-gather of the
// logits rows. Logits equal the single-rank CpuExecutor's within fp32 reduction-order noise
// (bit for bit at N = 1).
//
// KV storage: one KvManager (per worker, over ALL heads, global block ids) and per rank a
// full-size pool [num_blocks, block_size, head_dim] (K, V) + score + position, of which the rank
// writes only its heads' blocks (a block holds one (seq, layer, head), so ranks never write the
// same block). This costs N x the pool memory of a CpuExecutor (KvBytesPerBlock says how much),
// the price of keeping the single KvManager unchanged; it mirrors the GPUs, where each rank's
// storage lives on its own device, and it proves that no rank ever reads another rank's KVs.
// A block -> rank map, updated as ranks write, routes slot_reader() (which presents the scores
// and positions of ALL heads, for the host-side planners) and MoveKvs() (each move runs on the
// rank owning its block; KvMove carries no head, so no API change was needed).
//
// Compression under TP: PlanEvictionOnRanks() runs the distributed KV-Compress planner
// (worker/tp_eviction.h) on the ranks, each reading only its own storage; its plan equals
// EvictionPlanner::Plan over slot_reader() (the engine's host-side path, which also works).
//
// Thread-safety: like every Executor, driven by one engine thread and not thread-safe. Internally
// rank 0 runs on the calling thread and ranks 1..N-1 on threads the executor owns; the kernels
// share cpu::ThreadPool::Default() (whose ParallelFor calls run one at a time).
#ifndef KVC_WORKER_TP_CPU_EXECUTOR_H_
#define KVC_WORKER_TP_CPU_EXECUTOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/weights.h"
#include "worker/communicator.h"
#include "worker/executor.h"
#include "worker/tp_eviction.h"

namespace kvc {

class TensorParallelCpuExecutor : public Executor {
 public:
  // INVALID_ARGUMENT when tensor_parallel < 1, when it does not divide num_key_value_heads, when
  // intermediate_size or vocab_size < tensor_parallel, and as CpuExecutor::Create (num_blocks,
  // block_size, config); RESOURCE_EXHAUSTED when the shards or pools cannot be allocated.
  static absl::StatusOr<std::unique_ptr<TensorParallelCpuExecutor>> Create(
      std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size,
      int32_t tensor_parallel);
  ~TensorParallelCpuExecutor() override;

  // Host memory of one block over all ranks (K + V fp32, score fp32, position int32, per rank):
  // what kvc-worker divides its KV memory by.
  static int64_t KvBytesPerBlock(const ModelConfig& config, int32_t block_size,
                                 int32_t tensor_parallel);

  const ModelConfig& config() const override { return weights_->config; }
  const KvLayout& layout() const override { return layout_; }
  std::string backend() const override { return "cpu"; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override;
  const KvSlotReader& slot_reader() const override;
  // Each move runs on the rank that owns its blocks, in order. INVALID_ARGUMENT (nothing moved)
  // for an out-of-range slot, a source block no rank has written, or a move between blocks of
  // two ranks.
  absl::Status MoveKvs(std::span<const KvMove> moves) override;

  int32_t tensor_parallel() const { return sharding_.world_size; }
  const KvHeadSharding& sharding() const { return sharding_; }

  // KV-Compress planning where the scores live: every rank runs DistributedEvictionPlanner over
  // its own heads and storage; the merged plan (what KvManager::ApplyEviction takes) equals
  // EvictionPlanner::Plan(layout(), tables, slot_reader(), ...). Errors as EvictionPlanner::Plan.
  absl::StatusOr<EvictionPlan> PlanEvictionOnRanks(const SequenceBlockTables& tables,
                                                   int64_t num_tokens, int64_t evict_blocks,
                                                   const EvictionConstraints& constraints);

  // ---- Introspection (tests) ----
  // The rank whose storage holds `block` (the last rank that wrote it), -1 if none has.
  int32_t OwnerOfBlock(int32_t block) const;
  // One rank's own storage, [num_blocks * block_size (* head_dim)].
  std::span<const float> k_cache(int32_t rank) const;
  std::span<const float> v_cache(int32_t rank) const;
  std::span<const float> scores(int32_t rank) const;
  std::span<const int32_t> positions(int32_t rank) const;

 private:
  struct RankShard;
  struct RankState;
  struct StepInput;
  class RankThreads;
  class Reader;

  TensorParallelCpuExecutor(std::shared_ptr<const ModelWeights> weights, KvLayout layout,
                            KvHeadSharding sharding);
  absl::Status RankForward(int32_t rank, const ForwardBatch& batch, const StepInput& step,
                           ForwardOutput* out);
  // Runs fn(rank) on every rank; recreates the communicator group if a rank aborted it. Returns
  // the first error that is not the ABORTED echo of another rank's failure.
  absl::Status RunOnRanks(const std::function<absl::Status(int32_t)>& fn);
  absl::Status ResetCommunicators();

  std::shared_ptr<const ModelWeights> weights_;
  KvLayout layout_;
  KvHeadSharding sharding_;
  std::vector<float> inv_freq_;
  std::unique_ptr<LocalCommunicatorGroup> group_;
  std::vector<std::unique_ptr<RankState>> ranks_;
  std::vector<int16_t> block_owner_;  // [num_blocks], -1 = never written
  std::unique_ptr<Reader> slot_reader_;
  std::unique_ptr<RankThreads> threads_;
};

}  // namespace kvc

#endif  // KVC_WORKER_TP_CPU_EXECUTOR_H_
