#include "bench/eval/runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <span>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/kv_manager.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"
#include "worker/executor.h"

#ifdef KVC_EVAL_HAS_CUDA
#include <cuda_runtime_api.h>

#include "worker/cuda_executor.h"
#endif

namespace kvc::eval {
namespace {

bool CollectsScores(const Variant& v) {
  if (v.full()) return false;
  return v.policy == CompressionPolicyKind::kKvCompress ||
         v.policy == CompressionPolicyKind::kSnapKv ||
         v.policy == CompressionPolicyKind::kPyramidKv;
}

CompressionSettings SettingsFor(const Variant& v, const RunSettings& rs) {
  CompressionSettings cs;
  cs.mode = v.full() ? BudgetMode::kNone : BudgetMode::kRate;
  cs.compression_rate = v.full() ? 1.0 : v.rate;
  cs.constraints.protected_window = rs.protected_window;
  cs.constraints.sink_tokens = rs.sink_tokens;
  cs.constraints.min_kvs_per_head = rs.min_kvs_per_head;
  return cs;
}

// The engine's per-sequence policy seed for a request seed (worker/engine.cc).
uint64_t PolicySeed(uint64_t request_seed) { return request_seed ^ 0x9e3779b97f4a7c15ull; }

absl::Status ValidateInputs(const ModelWeights& w, const std::vector<Variant>& variants,
                            const RunSettings& rs) {
  if (variants.empty()) return absl::InvalidArgumentError("no variants to run");
  if (rs.block_size < 1) return absl::InvalidArgumentError("block_size must be >= 1");
  if (rs.observation_window < 1) {
    return absl::InvalidArgumentError("observation_window must be >= 1");
  }
  if (rs.protected_window < 0 || rs.sink_tokens < 0 || rs.min_kvs_per_head < 0) {
    return absl::InvalidArgumentError(
        "protected_window, sink_tokens and min_kvs_per_head must be >= 0");
  }
  if (rs.wave_prompts < 1) return absl::InvalidArgumentError("wave_prompts must be >= 1");
  if (rs.slot_read_threads < 1) {
    return absl::InvalidArgumentError("slot_read_threads must be >= 1");
  }
  if (rs.cuda_device < 0) return absl::InvalidArgumentError("cuda_device must be >= 0");
  if (rs.engine_max_seqs < 1) return absl::InvalidArgumentError("engine_max_seqs must be >= 1");
  for (const Variant& v : variants) {
    if (!(v.rate >= 1.0) || !std::isfinite(v.rate)) {
      return absl::InvalidArgumentError(
          absl::StrCat("compression rate must be >= 1, got ", v.rate));
    }
  }
  (void)w;
  return absl::OkStatus();
}

absl::Status ValidateJobs(const ModelWeights& w, const std::vector<GenerationJob>& jobs) {
  if (jobs.empty()) return absl::InvalidArgumentError("no prompts to run");
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& j = jobs[i];
    if (j.prompt.empty())
      return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " is empty"));
    if (static_cast<int64_t>(j.prompt.size()) >= w.config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " has ", j.prompt.size(),
                                                     " tokens; the model's context is ",
                                                     w.config.max_position_embeddings));
    }
    if (j.max_new_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", i, ": max_new_tokens must be >= 1"));
    }
  }
  return absl::OkStatus();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

KvLayout LayoutFor(const ModelConfig& c, int32_t block_size, int64_t num_blocks) {
  KvLayout l;
  l.num_layers = c.num_hidden_layers;
  l.num_kv_heads = c.num_key_value_heads;
  l.head_dim = c.head_dim;
  l.block_size = block_size;
  l.num_blocks = num_blocks;
  return l;
}

// Blocks a sequence of `tokens` tokens may hold under `v` (upper bound with slack).
int64_t BlocksBound(const KvLayout& l, const Variant& v, int64_t tokens, int32_t protected_window) {
  const int64_t heads = l.heads_per_seq();
  if (v.full()) return heads * CeilDiv(tokens, l.block_size);
  const int64_t target = TargetKvsForRate(l, tokens, v.rate, protected_window);
  return std::min(heads * CeilDiv(tokens, l.block_size), CeilDiv(target, l.block_size) + 3 * heads);
}

absl::StatusOr<std::unique_ptr<Executor>> MakeExecutor(std::shared_ptr<const ModelWeights> weights,
                                                       int64_t num_blocks, const RunSettings& rs) {
  if (rs.backend == Backend::kCpu) {
    ASSIGN_OR_RETURN(std::unique_ptr<CpuExecutor> e,
                     CpuExecutor::Create(std::move(weights), num_blocks, rs.block_size));
    return std::unique_ptr<Executor>(std::move(e));
  }
#ifdef KVC_EVAL_HAS_CUDA
  ASSIGN_OR_RETURN(
      std::unique_ptr<CudaExecutor> e,
      CudaExecutor::Create(std::move(weights), num_blocks, rs.block_size, rs.cuda_device));
  return std::unique_ptr<Executor>(std::move(e));
#else
  return absl::UnimplementedError(
      "backend cuda: this kvc-eval was built without CUDA (configure with -DKVC_ENABLE_CUDA=ON)");
#endif
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Host memory for the mirror: page-locked on CUDA (device->host copies into it skip the driver's
// staging buffer), ordinary otherwise.
template <typename T>
class HostArray {
 public:
  HostArray() = default;
  HostArray(const HostArray&) = delete;
  HostArray& operator=(const HostArray&) = delete;
  ~HostArray() { Release(); }
  absl::Status Allocate(int64_t n, bool pinned) {
    Release();
#ifdef KVC_EVAL_HAS_CUDA
    if (pinned) {
      void* p = nullptr;
      const cudaError_t err = cudaMallocHost(&p, sizeof(T) * static_cast<size_t>(n));
      if (err != cudaSuccess) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(absl::StrCat("slot mirror: cudaMallocHost of ", n,
                                                         " entries: ", cudaGetErrorString(err)));
      }
      data_ = static_cast<T*>(p);
      pinned_ = true;
      return absl::OkStatus();
    }
#endif
    (void)pinned;
    owned_.assign(static_cast<size_t>(n), T{});
    data_ = owned_.data();
    return absl::OkStatus();
  }
  T* data() const { return data_; }

 private:
  void Release() {
#ifdef KVC_EVAL_HAS_CUDA
    if (pinned_ && data_ != nullptr) cudaFreeHost(data_);
#endif
    pinned_ = false;
    data_ = nullptr;
    owned_.clear();
  }
  std::vector<T> owned_;
  T* data_ = nullptr;
  bool pinned_ = false;
};

// An exact host mirror of an executor's per-slot scores and positions (see runner.h, "Slot
// mirror"). Each slot is valid (equal to the executor's) or stale; a read of a block with a stale
// slot in range re-reads the whole block from the executor. The owner reports every change the
// executor makes: Forward() writes (Invalidate*) and MoveKvs() moves (ApplyMoves).
class SlotMirror final : public KvSlotReader {
 public:
  static absl::StatusOr<std::unique_ptr<SlotMirror>> Create(const KvSlotReader& source,
                                                            int64_t num_blocks, int32_t block_size,
                                                            bool pinned, bool verify,
                                                            int32_t threads) {
    std::unique_ptr<SlotMirror> m(new SlotMirror(source, num_blocks, block_size, verify, threads));
    const int64_t n = num_blocks * block_size;
    RETURN_IF_ERROR(m->scores_.Allocate(n, pinned));
    RETURN_IF_ERROR(m->positions_.Allocate(n, pinned));
    m->valid_.assign(static_cast<size_t>(n), 0);
    return m;
  }

  float Score(int32_t block, int32_t offset) const override {
    if (!InRange(block, offset)) return source_.Score(block, offset);
    EnsureValid(block, offset + 1);
    return scores_.data()[Index(block, offset)];
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    if (!InRange(block, offset)) return source_.Position(block, offset);
    EnsureValid(block, offset + 1);
    return positions_.data()[Index(block, offset)];
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    if (count <= 0) return;
    if (!InRange(block, count - 1)) {
      source_.ReadBlock(block, count, scores, positions);
      return;
    }
    EnsureValid(block, count);
    std::memcpy(scores, scores_.data() + Index(block, 0), sizeof(float) * count);
    std::memcpy(positions, positions_.data() + Index(block, 0), sizeof(int32_t) * count);
  }

  // Slots [begin, end) of `block` may have changed in the executor.
  void Invalidate(int32_t block, int32_t begin, int32_t end) {
    if (block < 0 || block >= num_blocks_) return;
    begin = std::max(begin, 0);
    end = std::min(end, block_size_);
    if (begin < end) std::memset(valid_.data() + Index(block, begin), 0, end - begin);
  }
  // Every slot of every block of `tables`.
  void InvalidateAll(const SequenceBlockTables& tables) {
    for (const HeadBlockTable& h : tables.heads) {
      for (int32_t b : h.blocks) Invalidate(b, 0, block_size_);
    }
  }
  // The executor ran these moves (in order): replay them.
  void ApplyMoves(std::span<const KvMove> moves) {
    for (const KvMove& m : moves) {
      if (!InRange(m.src_block, m.src_offset) || !InRange(m.dst_block, m.dst_offset)) continue;
      const int64_t s = Index(m.src_block, m.src_offset), d = Index(m.dst_block, m.dst_offset);
      scores_.data()[d] = scores_.data()[s];
      positions_.data()[d] = positions_.data()[s];
      valid_[d] = valid_[s];
    }
  }
  // Reads every block of `tables` holding a stale slot below its head's num_kvs: one
  // KvSlotReader::Prefetch of those blocks (one gather and copy on CUDA), then per-block reads
  // (served by the source's prefetch; split over `threads`).
  void Prefetch(const SequenceBlockTables& tables) {
    std::vector<int32_t> stale;
    for (const HeadBlockTable& h : tables.heads) {
      for (size_t j = 0; j < h.blocks.size(); ++j) {
        const int32_t count = std::min<int32_t>(block_size_, h.num_kvs - j * block_size_);
        if (count > 0 && InRange(h.blocks[j], count - 1) && !Valid(h.blocks[j], count)) {
          stale.push_back(h.blocks[j]);
        }
      }
    }
    PrefetchBlocks(stale);
  }
  void PrefetchBlocks(const std::vector<int32_t>& blocks) {
    if (blocks.empty()) return;
    SequenceBlockTables stale;
    stale.heads.resize(1);
    stale.heads[0].blocks = blocks;
    stale.heads[0].num_kvs = static_cast<int32_t>(blocks.size()) * block_size_;
    source_.Prefetch(stale);
    ++prefetches_;
    const int64_t n = static_cast<int64_t>(blocks.size());
    const int64_t t = std::min<int64_t>(threads_, (n + 63) / 64);
    if (t <= 1) {
      for (int32_t b : blocks) Load(b);
      return;
    }
    std::vector<std::thread> pool;
    for (int64_t k = 0; k < t; ++k) {
      pool.emplace_back([&, k] {
        for (int64_t i = k; i < n; i += t) Load(blocks[i]);
      });
    }
    for (auto& th : pool) th.join();
  }

  int64_t block_reads() const { return block_reads_.load(); }
  int64_t hits() const { return hits_; }
  int64_t prefetches() const { return prefetches_; }
  int64_t single_reads() const { return single_reads_; }
  int64_t mismatches() const { return mismatches_; }

 private:
  SlotMirror(const KvSlotReader& source, int64_t num_blocks, int32_t block_size, bool verify,
             int32_t threads)
      : source_(source),
        num_blocks_(num_blocks),
        block_size_(block_size),
        verify_(verify),
        threads_(std::max(1, threads)) {}

  bool InRange(int32_t block, int32_t offset) const {
    return block >= 0 && block < num_blocks_ && offset >= 0 && offset < block_size_;
  }
  int64_t Index(int32_t block, int32_t offset) const {
    return static_cast<int64_t>(block) * block_size_ + offset;
  }
  bool Valid(int32_t block, int32_t count) const {
    const uint8_t* v = valid_.data() + Index(block, 0);
    for (int32_t i = 0; i < count; ++i) {
      if (!v[i]) return false;
    }
    return true;
  }
  // Reads the whole block from the executor (thread-safe for distinct blocks).
  void Load(int32_t block) const {
    const int64_t i = Index(block, 0);
    source_.ReadBlock(block, block_size_, scores_.data() + i, positions_.data() + i);
    std::memset(valid_.data() + i, 1, block_size_);
    block_reads_.fetch_add(1, std::memory_order_relaxed);
  }
  void EnsureValid(int32_t block, int32_t count) const {
    if (!Valid(block, count)) {
      ++single_reads_;  // not prefetched: on CUDA, device copies of this block alone
      Load(block);
      return;
    }
    ++hits_;
    if (!verify_) return;
    std::vector<float> s(block_size_);
    std::vector<int32_t> p(block_size_);
    source_.ReadBlock(block, count, s.data(), p.data());
    const int64_t i = Index(block, 0);
    if (std::memcmp(s.data(), scores_.data() + i, sizeof(float) * count) != 0 ||
        std::memcmp(p.data(), positions_.data() + i, sizeof(int32_t) * count) != 0) {
      ++mismatches_;
    }
  }

  const KvSlotReader& source_;
  const int64_t num_blocks_;
  const int32_t block_size_;
  const bool verify_;
  const int32_t threads_;
  HostArray<float> scores_;
  HostArray<int32_t> positions_;
  mutable std::vector<uint8_t> valid_;
  mutable std::atomic<int64_t> block_reads_{0};
  mutable int64_t hits_ = 0;
  int64_t prefetches_ = 0;
  mutable int64_t single_reads_ = 0;
  mutable int64_t mismatches_ = 0;
};

// ---- The shared-prefill machinery: one executor + KV manager, sequences forked from a base ----
class ForkSession {
 public:
  static absl::StatusOr<std::unique_ptr<ForkSession>> Create(
      std::shared_ptr<const ModelWeights> weights, const RunSettings& rs, int64_t num_blocks,
      RunStats* stats) {
    std::unique_ptr<ForkSession> s(new ForkSession());
    s->rs_ = rs;
    s->stats_ = stats != nullptr ? stats : &s->own_stats_;
    ASSIGN_OR_RETURN(s->exec_, MakeExecutor(std::move(weights), num_blocks, rs));
    KvManagerOptions ko;
    ko.layout = s->exec_->layout();
    ASSIGN_OR_RETURN(s->kv_, KvManager::Create(ko));
    CompressionPolicyOptions po;
    for (CompressionPolicyKind k :
         {CompressionPolicyKind::kKvCompress, CompressionPolicyKind::kSnapKv,
          CompressionPolicyKind::kPyramidKv, CompressionPolicyKind::kStreaming,
          CompressionPolicyKind::kRandom}) {
      s->policies_[k] = MakeCompressionPolicy(k, po);
    }
    const SlotCache mode = rs.slot_cache != SlotCache::kAuto ? rs.slot_cache
                           : rs.backend == Backend::kCuda    ? SlotCache::kOn
                                                             : SlotCache::kOff;
    s->reprefill_ = rs.fork == ForkMode::kReprefill ||
                    (rs.fork == ForkMode::kAuto && rs.backend == Backend::kCuda);
    if (mode != SlotCache::kOff) {
      ASSIGN_OR_RETURN(
          s->mirror_,
          SlotMirror::Create(s->exec_->slot_reader(), num_blocks, rs.block_size,
                             /*pinned=*/rs.backend == Backend::kCuda,
                             /*verify=*/mode == SlotCache::kVerify, rs.slot_read_threads));
    }
    return s;
  }

  KvManager& kv() { return *kv_; }
  const KvLayout& layout() const { return kv_->layout(); }
  const KvSlotReader& reader() const {
    return mirror_ ? static_cast<const KvSlotReader&>(*mirror_) : exec_->slot_reader();
  }

  // Prefills `prompt` as a new uncompressed sequence, collecting the observation-window scores;
  // copies its last logits row into *logits.
  absl::StatusOr<int64_t> Prefill(std::span<const int32_t> prompt, std::vector<float>* logits) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t id = next_id_++;
    RETURN_IF_ERROR(kv_->AddSequence(id));
    RETURN_IF_ERROR(Reserve(id, static_cast<int32_t>(prompt.size())));
    ForwardBatch batch;
    batch.score_pool_kernel = rs_.score_pool_kernel;
    ForwardSequence f;
    f.seq_id = id;
    f.tokens = prompt;
    f.start_position = 0;
    f.tables = kv_->Tables(id);
    f.score_queries =
        std::min<int32_t>(rs_.observation_window, static_cast<int32_t>(prompt.size()));
    f.score_pool = true;
    batch.seqs.push_back(f);
    RETURN_IF_ERROR(exec_->Forward(batch, &out_));
    if (mirror_) mirror_->InvalidateAll(*f.tables);
    logits->assign(out_.logits.begin(), out_.logits.begin() + out_.vocab_size);
    stats_->forward_calls++;
    stats_->prefills++;
    stats_->prefill_seconds += SecondsSince(t0);
    return id;
  }

  // A new sequence holding `base`'s KV cache (K, V, score and position of every slot), and in
  // *logits its last logits row. ForkMode::kCopy copies the slots (Executor::MoveKvs) and the
  // base's logits `base_logits`; kReprefill prefills `prompt` (the base's tokens) again, as the
  // engine prefills every request, and returns that prefill's own logits.
  absl::StatusOr<int64_t> Fork(int64_t base, std::span<const int32_t> prompt,
                               std::span<const float> base_logits, std::vector<float>* logits) {
    if (reprefill_) {
      ASSIGN_OR_RETURN(int64_t id, Prefill(prompt, logits));
      if (!std::equal(logits->begin(), logits->end(), base_logits.begin(), base_logits.end())) {
        stats_->reprefill_logits_differ++;
      }
      return id;
    }
    logits->assign(base_logits.begin(), base_logits.end());
    const auto t0 = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(SequenceUsage u, kv_->Usage(base));
    const int64_t id = next_id_++;
    RETURN_IF_ERROR(kv_->AddSequence(id));
    RETURN_IF_ERROR(Reserve(id, static_cast<int32_t>(u.tokens)));
    const SequenceBlockTables* src = kv_->Tables(base);
    const SequenceBlockTables* dst = kv_->Tables(id);
    // The copies come from the mirror too: load the base's stale blocks once, for all forks.
    if (mirror_) mirror_->Prefetch(*src);
    const int32_t b = layout().block_size;
    moves_.clear();
    for (size_t h = 0; h < src->heads.size(); ++h) {
      const HeadBlockTable& sh = src->heads[h];
      const HeadBlockTable& dh = dst->heads[h];
      if (sh.num_kvs != dh.num_kvs) {
        return absl::FailedPreconditionError("Fork: the base sequence is compressed");
      }
      for (int32_t s = 0; s < sh.num_kvs; ++s) {
        KvMove m;
        m.src_slot = m.dst_slot = s;
        m.src_block = sh.blocks[s / b];
        m.src_offset = m.dst_offset = s % b;
        m.dst_block = dh.blocks[s / b];
        moves_.push_back(m);
      }
    }
    RETURN_IF_ERROR(exec_->MoveKvs(moves_));
    if (mirror_) mirror_->ApplyMoves(moves_);
    stats_->fork_seconds += SecondsSince(t0);
    return id;
  }

  // Ends a sequence: its blocks go back to the pool, the executor drops its per-sequence state.
  absl::Status Free(int64_t id) {
    RETURN_IF_ERROR(kv_->FreeSequence(id));
    exec_->ForgetSequence(id);
    return absl::OkStatus();
  }
  // Ends every sequence still registered.
  absl::Status FreeAll() {
    for (int64_t id : kv_->SequenceIds()) RETURN_IF_ERROR(Free(id));
    return absl::OkStatus();
  }

  // Blocks Compress() would free now (0: nothing to do).
  absl::StatusOr<int64_t> BlocksToEvict(int64_t id, const Variant& v) const {
    if (v.full()) return 0;
    return kv_->EvictBlocksForBudget(id, SettingsFor(v, rs_));
  }

  // Loads the stale mirror blocks of every sequence in `ids` (in parallel) ahead of planning.
  void PrefetchSlots(const std::vector<int64_t>& ids) {
    if (!mirror_ || ids.empty()) return;
    const auto t0 = std::chrono::steady_clock::now();
    // One pass over all sequences so that the reads of all of them run in parallel.
    SequenceBlockTables all;
    for (int64_t id : ids) {
      const SequenceBlockTables* t = kv_->Tables(id);
      if (t != nullptr) all.heads.insert(all.heads.end(), t->heads.begin(), t->heads.end());
    }
    mirror_->Prefetch(all);
    stats_->compress_seconds += SecondsSince(t0);
  }

  // Engine::Compress: plan with the variant's policy to its budget, apply, run the moves.
  absl::Status Compress(int64_t id, const Variant& v, uint64_t policy_seed,
                        CompressionTrigger trigger) {
    if (v.full()) return absl::OkStatus();
    const auto t0 = std::chrono::steady_clock::now();
    const CompressionSettings cs = SettingsFor(v, rs_);
    ASSIGN_OR_RETURN(int64_t evict, kv_->EvictBlocksForBudget(id, cs));
    if (evict <= 0) return absl::OkStatus();
    // Stale slots (e.g. of a fresh prefill) in one bulk read rather than one read per block.
    if (mirror_) mirror_->Prefetch(*kv_->Tables(id));
    ASSIGN_OR_RETURN(EvictionPlan plan,
                     PlanSequenceEviction(*kv_, id, reader(), evict, cs.constraints, policy_seed,
                                          *policies_.at(v.policy)));
    if (plan.empty()) return absl::OkStatus();
    std::vector<KvMove> moves;
    RETURN_IF_ERROR(kv_->ApplyEviction(id, plan, trigger, &moves));
    RETURN_IF_ERROR(exec_->MoveKvs(moves));
    if (mirror_) mirror_->ApplyMoves(moves);
    stats_->compressions++;
    stats_->compress_seconds += SecondsSince(t0);
    return absl::OkStatus();
  }

  struct Row {
    int64_t id = 0;
    int32_t token = 0;
    int32_t position = 0;
    bool scores = false;
  };
  // Appends one token to each row's sequence and runs one decode forward pass; logits() then
  // holds one row per input row.
  absl::Status Decode(const std::vector<Row>& rows) {
    const auto t0 = std::chrono::steady_clock::now();
    tokens_.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      RETURN_IF_ERROR(Reserve(rows[i].id, 1));
      tokens_[i] = rows[i].token;
    }
    ForwardBatch batch;
    batch.score_pool_kernel = rs_.score_pool_kernel;
    for (size_t i = 0; i < rows.size(); ++i) {
      ForwardSequence f;
      f.seq_id = rows[i].id;
      f.tokens = std::span<const int32_t>(tokens_).subspan(i, 1);
      f.start_position = rows[i].position;
      f.tables = kv_->Tables(rows[i].id);
      f.score_queries = rows[i].scores && rs_.decode_scores ? 1 : 0;
      batch.seqs.push_back(f);
    }
    RETURN_IF_ERROR(exec_->Forward(batch, &out_));
    if (mirror_) {
      // Scores change in every slot a scoring query saw; otherwise only the new slot is written.
      const int32_t b = layout().block_size;
      for (const ForwardSequence& f : batch.seqs) {
        if (f.score_queries > 0) {
          mirror_->InvalidateAll(*f.tables);
          continue;
        }
        for (const HeadBlockTable& h : f.tables->heads) {
          const int32_t slot = h.num_kvs - 1;
          if (slot >= 0) mirror_->Invalidate(h.blocks[slot / b], slot % b, slot % b + 1);
        }
      }
    }
    stats_->forward_calls++;
    stats_->decode_seconds += SecondsSince(t0);
    return absl::OkStatus();
  }
  std::span<const float> logits(size_t row) const {
    return std::span<const float>(out_.logits.data() + row * out_.vocab_size, out_.vocab_size);
  }

  // Copies the mirror's counters into the stats; INTERNAL if a verified read differed.
  absl::Status Finish() {
    if (!mirror_) return absl::OkStatus();
    stats_->slot_block_reads += mirror_->block_reads();
    stats_->mirror_block_hits += mirror_->hits();
    stats_->slot_prefetches += mirror_->prefetches();
    stats_->slot_single_block_reads += mirror_->single_reads();
    stats_->mirror_mismatches += mirror_->mismatches();
    if (mirror_->mismatches() > 0) {
      return absl::InternalError(absl::StrCat("slot mirror: ", mirror_->mismatches(),
                                              " mirrored block reads differed from the executor"));
    }
    return absl::OkStatus();
  }

 private:
  ForkSession() = default;
  absl::Status Reserve(int64_t id, int32_t n) {
    const int64_t need = kv_->BlocksNeededToAppend(id, n);
    if (need > kv_->num_free_blocks()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the evaluation's KV pool (", kv_->num_total_blocks(), " blocks) is full: need ", need,
          ", free ", kv_->num_free_blocks(), "; lower --wave"));
    }
    return kv_->Append(id, n);
  }

  RunSettings rs_;
  RunStats own_stats_;
  RunStats* stats_ = nullptr;
  std::unique_ptr<Executor> exec_;
  std::unique_ptr<KvManager> kv_;
  std::unique_ptr<SlotMirror> mirror_;
  bool reprefill_ = false;
  std::map<CompressionPolicyKind, std::unique_ptr<CompressionPolicy>> policies_;
  ForwardOutput out_;
  std::vector<int32_t> tokens_;
  std::vector<KvMove> moves_;
  int64_t next_id_ = 1;
};

double NegLogLikelihood(std::span<const float> row, int32_t target) {
  double mx = -INFINITY;
  for (float x : row) mx = std::max<double>(mx, x);
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x) - mx);
  return std::log(sum) + mx - static_cast<double>(row[target]);
}

}  // namespace

std::string VariantName(const Variant& v) {
  if (v.full()) return "full";
  return absl::StrFormat("%s@%g", CompressionPolicyName(v.policy), v.rate);
}

std::string_view BackendName(Backend b) { return b == Backend::kCuda ? "cuda" : "cpu"; }

absl::StatusOr<Backend> ParseBackend(std::string_view name) {
  if (name == "cpu") return Backend::kCpu;
  if (name == "cuda") return Backend::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("backend '", std::string(name), "': expected cpu or cuda"));
}

bool CudaBackendBuilt() {
#ifdef KVC_EVAL_HAS_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::string> CudaDeviceName(int32_t device) {
#ifdef KVC_EVAL_HAS_CUDA
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", device, ": ", cudaGetErrorString(err)));
  }
  return std::string(prop.name);
#else
  return absl::UnimplementedError(
      absl::StrCat("CUDA device ", device, ": this kvc-eval was built without CUDA"));
#endif
}

absl::StatusOr<Variant> ParseVariantName(std::string_view name) {
  if (name == "full") return Variant{};
  const size_t at = name.find('@');
  double rate = 0;
  if (at == std::string_view::npos || !absl::SimpleAtod(std::string(name.substr(at + 1)), &rate) ||
      !(rate >= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("variant '", std::string(name), "': expected full or <policy>@<rate>"));
  }
  ASSIGN_OR_RETURN(CompressionPolicyKind kind, ParseCompressionPolicy(name.substr(0, at)));
  return Variant{kind, rate};
}

absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunWithEngine(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& rs, const ProgressFn& progress) {
  if (weights == nullptr) return absl::InvalidArgumentError("weights are null");
  RETURN_IF_ERROR(ValidateInputs(*weights, variants, rs));
  RETURN_IF_ERROR(ValidateJobs(*weights, jobs));
  const ModelConfig& c = weights->config;
  int64_t max_len = 0;
  for (const auto& j : jobs) {
    max_len =
        std::max<int64_t>(max_len, static_cast<int64_t>(j.prompt.size()) + j.max_new_tokens + 1);
  }
  const int64_t heads = static_cast<int64_t>(c.num_hidden_layers) * c.num_key_value_heads;
  // Room for engine_max_seqs uncompressed sequences at their longest: nothing is ever preempted.
  const int64_t num_blocks = rs.engine_max_seqs * heads * CeilDiv(max_len, rs.block_size) + heads;
  ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, MakeExecutor(weights, num_blocks, rs));
  KvManagerOptions ko;
  ko.layout = exec->layout();
  ASSIGN_OR_RETURN(std::unique_ptr<KvManager> kv, KvManager::Create(ko));
  EngineOptions eo;
  eo.max_num_seqs = rs.engine_max_seqs;
  eo.max_prefill_tokens = static_cast<int32_t>(std::max<int64_t>(4096, max_len));
  eo.decode_scores = rs.decode_scores;
  eo.score_pool_kernel = rs.score_pool_kernel;
  Engine engine(std::move(exec), std::move(kv), eo, nullptr);

  std::vector<std::vector<GenerationResult>> results(
      jobs.size(), std::vector<GenerationResult>(variants.size()));
  std::vector<int32_t> pending(jobs.size(), static_cast<int32_t>(variants.size()));
  int64_t done_jobs = 0;
  absl::Status failure;
  for (size_t i = 0; i < jobs.size(); ++i) {
    for (size_t v = 0; v < variants.size(); ++v) {
      const Variant& var = variants[v];
      EngineRequest r;
      r.request_id = absl::StrCat(i, "/", v);
      r.prompt = jobs[i].prompt;
      r.sampling.temperature = 0;
      r.seed = jobs[i].seed;
      r.max_tokens = jobs[i].max_new_tokens;
      r.stop_token_ids = jobs[i].stop_token_ids;
      r.ignore_eos = jobs[i].ignore_eos;
      r.policy = var.full() ? CompressionPolicyKind::kNone : var.policy;
      r.compression = SettingsFor(var, rs);
      r.observation_window = rs.observation_window;
      r.continual = rs.continual;
      GenerationResult* out = &results[i][v];
      RETURN_IF_ERROR(engine.Submit(std::move(r), [&, out, i](EngineOutput o) {
        out->tokens.insert(out->tokens.end(), o.tokens.begin(), o.tokens.end());
        if (!o.finished) return;
        if (!o.status.ok() && failure.ok()) failure = o.status;
        out->kvs_held = o.usage.kvs_held;
        out->kvs_uncompressed = o.usage.kvs_uncompressed;
        out->compressions = o.usage.compressions;
        out->preemptions = o.usage.preemptions;
        if (--pending[i] == 0) {
          ++done_jobs;
          if (progress) progress(done_jobs, static_cast<int64_t>(jobs.size()));
        }
      }));
    }
  }
  while (engine.StepForTest()) {
  }
  engine.Stop();
  RETURN_IF_ERROR(failure);
  return results;
}

absl::StatusOr<std::vector<std::vector<GenerationResult>>> RunSharedPrefill(
    std::shared_ptr<const ModelWeights> weights, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, const RunSettings& rs, const ProgressFn& progress,
    RunStats* stats) {
  if (weights == nullptr) return absl::InvalidArgumentError("weights are null");
  RETURN_IF_ERROR(ValidateInputs(*weights, variants, rs));
  RETURN_IF_ERROR(ValidateJobs(*weights, jobs));
  const ModelConfig& c = weights->config;
  const KvLayout probe = LayoutFor(c, rs.block_size, 1);
  // Pool: per wave, every variant of every prompt at its bound, plus one full-size transient.
  int64_t max_len = 0;
  for (const auto& j : jobs) {
    max_len =
        std::max<int64_t>(max_len, static_cast<int64_t>(j.prompt.size()) + j.max_new_tokens + 1);
  }
  int64_t per_job = BlocksBound(probe, Variant{}, max_len, rs.protected_window);  // the base
  for (const Variant& v : variants) {
    if (!v.full()) per_job += BlocksBound(probe, v, max_len, rs.protected_window);
  }
  const int64_t wave = std::min<int64_t>(rs.wave_prompts, static_cast<int64_t>(jobs.size()));
  const int64_t num_blocks =
      wave * per_job + BlocksBound(probe, Variant{}, max_len, rs.protected_window);
  ASSIGN_OR_RETURN(std::unique_ptr<ForkSession> session,
                   ForkSession::Create(weights, rs, num_blocks, stats));
  KvManager& kv = session->kv();

  struct Seq {
    size_t job = 0, variant = 0;
    int64_t id = 0;
    std::vector<int32_t> tokens;  // prompt + generated
    int32_t generated = 0;
    bool shares_base = false;  // the full variant decodes on the base sequence itself
  };
  std::vector<std::vector<GenerationResult>> results(
      jobs.size(), std::vector<GenerationResult>(variants.size()));
  // The engine's finish rule after a sampled token.
  auto finished = [&](const Seq& s, int32_t tok) {
    const GenerationJob& j = jobs[s.job];
    if (std::find(j.stop_token_ids.begin(), j.stop_token_ids.end(), tok) !=
        j.stop_token_ids.end()) {
      return true;
    }
    if (!j.ignore_eos &&
        std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) != c.eos_token_ids.end()) {
      return true;
    }
    return s.generated >= j.max_new_tokens ||
           static_cast<int64_t>(s.tokens.size()) >= c.max_position_embeddings;
  };
  auto finish = [&](Seq& s) -> absl::Status {
    GenerationResult& r = results[s.job][s.variant];
    r.tokens.assign(s.tokens.end() - s.generated, s.tokens.end());
    ASSIGN_OR_RETURN(SequenceUsage u, kv.Usage(s.id));
    r.kvs_held = u.kvs_held;
    r.kvs_uncompressed = u.kvs_uncompressed;
    r.compressions = u.compressions;
    return absl::OkStatus();
  };

  int64_t done = 0;
  std::vector<float> logits, fork_logits;
  for (size_t w0 = 0; w0 < jobs.size(); w0 += wave) {
    const size_t w1 = std::min(jobs.size(), w0 + static_cast<size_t>(wave));
    std::vector<Seq> active;
    std::vector<int64_t> bases_to_free;
    for (size_t i = w0; i < w1; ++i) {
      const GenerationJob& job = jobs[i];
      ASSIGN_OR_RETURN(int64_t base, session->Prefill(job.prompt, &logits));
      bool base_used = false;
      for (size_t v = 0; v < variants.size(); ++v) {
        Seq s;
        s.job = i;
        s.variant = v;
        if (variants[v].full() && !base_used) {
          s.id = base;
          s.shares_base = true;
          base_used = true;
          fork_logits = logits;
        } else {
          ASSIGN_OR_RETURN(s.id, session->Fork(base, job.prompt, logits, &fork_logits));
        }
        const int32_t first = ArgmaxToken(fork_logits);
        s.tokens = job.prompt;
        s.tokens.push_back(first);
        s.generated = 1;
        if (finished(s, first)) {
          RETURN_IF_ERROR(finish(s));
          if (!s.shares_base) RETURN_IF_ERROR(session->Free(s.id));
          continue;
        }
        // Compress right after the prefill (the engine's prefill trigger).
        RETURN_IF_ERROR(session->Compress(s.id, variants[v], PolicySeed(job.seed),
                                          CompressionTrigger::kPrefill));
        active.push_back(std::move(s));
      }
      if (!base_used) bases_to_free.push_back(base);
    }
    // Forks are done: a base that no variant decodes on is no longer needed.
    for (int64_t b : bases_to_free) RETURN_IF_ERROR(session->Free(b));
    std::vector<ForkSession::Row> rows;
    while (!active.empty()) {
      rows.clear();
      if (rs.continual) {
        // Read the slots of every sequence about to compress at once (in parallel on a mirror).
        std::vector<int64_t> over;
        for (const Seq& s : active) {
          ASSIGN_OR_RETURN(int64_t evict, session->BlocksToEvict(s.id, variants[s.variant]));
          if (evict > 0) over.push_back(s.id);
        }
        session->PrefetchSlots(over);
        for (Seq& s : active) {
          RETURN_IF_ERROR(session->Compress(s.id, variants[s.variant], PolicySeed(jobs[s.job].seed),
                                            CompressionTrigger::kContinual));
        }
      }
      for (Seq& s : active) {
        ForkSession::Row r;
        r.id = s.id;
        r.token = s.tokens.back();
        r.position = static_cast<int32_t>(s.tokens.size()) - 1;
        r.scores = CollectsScores(variants[s.variant]);
        rows.push_back(r);
      }
      RETURN_IF_ERROR(session->Decode(rows));
      std::vector<Seq> still;
      for (size_t k = 0; k < active.size(); ++k) {
        Seq& s = active[k];
        const int32_t tok = ArgmaxToken(session->logits(k));
        s.tokens.push_back(tok);
        s.generated++;
        if (finished(s, tok)) {
          RETURN_IF_ERROR(finish(s));
          RETURN_IF_ERROR(session->Free(s.id));
        } else {
          still.push_back(std::move(s));
        }
      }
      active = std::move(still);
    }
    // Bases whose full variant finished at its first token are still registered.
    RETURN_IF_ERROR(session->FreeAll());
    for (size_t i = w0; i < w1; ++i) {
      ++done;
      if (progress) progress(done, static_cast<int64_t>(jobs.size()));
    }
  }
  RETURN_IF_ERROR(session->Finish());
  return results;
}

absl::StatusOr<std::vector<PerplexityResult>> RunPerplexity(
    std::shared_ptr<const ModelWeights> weights, const std::vector<std::vector<int32_t>>& windows,
    int32_t prefix_len, const std::vector<Variant>& variants, const RunSettings& rs,
    const ProgressFn& progress, RunStats* stats) {
  if (weights == nullptr) return absl::InvalidArgumentError("weights are null");
  RETURN_IF_ERROR(ValidateInputs(*weights, variants, rs));
  if (windows.empty()) return absl::InvalidArgumentError("no perplexity windows");
  if (prefix_len < 1) return absl::InvalidArgumentError("prefix length must be >= 1");
  const ModelConfig& c = weights->config;
  int64_t max_len = 0;
  for (size_t i = 0; i < windows.size(); ++i) {
    if (static_cast<int64_t>(windows[i].size()) <= prefix_len) {
      return absl::InvalidArgumentError(absl::StrCat("perplexity window ", i, " has ",
                                                     windows[i].size(), " tokens; the prefix is ",
                                                     prefix_len));
    }
    if (static_cast<int64_t>(windows[i].size()) > c.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("perplexity window ", i, " is longer than ", "the model's context"));
    }
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(windows[i].size()));
  }
  const KvLayout probe = LayoutFor(c, rs.block_size, 1);
  int64_t per_window = BlocksBound(probe, Variant{}, max_len, rs.protected_window);
  for (const Variant& v : variants)
    per_window += BlocksBound(probe, v, max_len, rs.protected_window);
  const int64_t wave = std::min<int64_t>(rs.wave_prompts, static_cast<int64_t>(windows.size()));
  ASSIGN_OR_RETURN(std::unique_ptr<ForkSession> session,
                   ForkSession::Create(weights, rs, wave * per_window + per_window, stats));
  KvManager& kv = session->kv();

  std::vector<double> nll(variants.size(), 0.0), kept(variants.size(), 0.0);
  std::vector<int64_t> count(variants.size(), 0);
  std::vector<float> logits, fork_logits;
  int64_t done = 0;
  for (size_t w0 = 0; w0 < windows.size(); w0 += wave) {
    const size_t w1 = std::min(windows.size(), w0 + static_cast<size_t>(wave));
    struct Seq {
      size_t window = 0, variant = 0;
      int64_t id = 0;
    };
    std::vector<Seq> seqs;
    for (size_t i = w0; i < w1; ++i) {
      const auto& win = windows[i];
      ASSIGN_OR_RETURN(int64_t base,
                       session->Prefill(std::span<const int32_t>(win).first(prefix_len), &logits));
      for (size_t v = 0; v < variants.size(); ++v) {
        ASSIGN_OR_RETURN(
            int64_t id, session->Fork(base, std::span<const int32_t>(win).first(prefix_len), logits,
                                      &fork_logits));
        nll[v] += NegLogLikelihood(fork_logits, win[prefix_len]);
        count[v] += 1;
        RETURN_IF_ERROR(
            session->Compress(id, variants[v], PolicySeed(i), CompressionTrigger::kPrefill));
        seqs.push_back({i, v, id});
      }
      RETURN_IF_ERROR(session->Free(base));
    }
    // Teacher forcing: step t feeds token prefix_len + t and scores token prefix_len + t + 1.
    std::vector<ForkSession::Row> rows;
    for (int64_t t = 0;; ++t) {
      rows.clear();
      std::vector<size_t> live;
      if (rs.continual) {
        std::vector<int64_t> over;
        for (const Seq& q : seqs) {
          if (prefix_len + t + 1 >= static_cast<int64_t>(windows[q.window].size())) continue;
          ASSIGN_OR_RETURN(int64_t evict, session->BlocksToEvict(q.id, variants[q.variant]));
          if (evict > 0) over.push_back(q.id);
        }
        session->PrefetchSlots(over);
      }
      for (size_t k = 0; k < seqs.size(); ++k) {
        const auto& win = windows[seqs[k].window];
        if (prefix_len + t + 1 >= static_cast<int64_t>(win.size())) continue;
        if (rs.continual) {
          RETURN_IF_ERROR(session->Compress(seqs[k].id, variants[seqs[k].variant],
                                            PolicySeed(seqs[k].window),
                                            CompressionTrigger::kContinual));
        }
        ForkSession::Row r;
        r.id = seqs[k].id;
        r.token = win[prefix_len + t];
        r.position = static_cast<int32_t>(prefix_len + t);
        r.scores = CollectsScores(variants[seqs[k].variant]);
        rows.push_back(r);
        live.push_back(k);
      }
      if (rows.empty()) break;
      RETURN_IF_ERROR(session->Decode(rows));
      for (size_t r = 0; r < live.size(); ++r) {
        const Seq& s = seqs[live[r]];
        nll[s.variant] +=
            NegLogLikelihood(session->logits(r), windows[s.window][prefix_len + t + 1]);
        count[s.variant] += 1;
      }
    }
    for (const Seq& s : seqs) {
      ASSIGN_OR_RETURN(SequenceUsage u, kv.Usage(s.id));
      kept[s.variant] += static_cast<double>(u.kvs_held) / static_cast<double>(u.kvs_uncompressed);
      RETURN_IF_ERROR(session->Free(s.id));
    }
    for (size_t i = w0; i < w1; ++i) {
      ++done;
      if (progress) progress(done, static_cast<int64_t>(windows.size()));
    }
  }
  RETURN_IF_ERROR(session->Finish());
  std::vector<PerplexityResult> out;
  for (size_t v = 0; v < variants.size(); ++v) {
    PerplexityResult r;
    r.variant = variants[v];
    r.tokens = count[v];
    r.mean_nll = nll[v] / static_cast<double>(count[v]);
    r.perplexity = std::exp(r.mean_nll);
    r.kept_fraction = kept[v] / static_cast<double>(windows.size());
    out.push_back(r);
  }
  return out;
}

}  // namespace kvc::eval
