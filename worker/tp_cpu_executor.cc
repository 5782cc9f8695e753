#include "worker/tp_cpu_executor.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_scores.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc {
namespace {

// As in CpuExecutor: steps whose sequences all have few tokens attend across sequences in
// parallel.
constexpr int64_t kSmallAttentionTokens = 8;

// Rows [begin, end) of a row-major [rows, cols] matrix.
std::vector<float> RowSlice(const std::vector<float>& m, int64_t cols, int64_t begin, int64_t end) {
  if (m.empty()) return {};
  return std::vector<float>(m.begin() + begin * cols, m.begin() + end * cols);
}

// Columns [begin, end) of a row-major [rows, cols] matrix, as a [rows, end - begin] matrix.
std::vector<float> ColSlice(const std::vector<float>& m, int64_t rows, int64_t cols, int64_t begin,
                            int64_t end) {
  std::vector<float> out(static_cast<size_t>(rows * (end - begin)));
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(m.begin() + r * cols + begin, m.begin() + r * cols + end,
              out.begin() + r * (end - begin));
  }
  return out;
}

}  // namespace

// ---- Rank threads ------------------------------------------------------------------------------

// Ranks 1..N-1 each run on a thread of their own; Run() executes rank 0 on the caller and waits
// for the others.
class TensorParallelCpuExecutor::RankThreads {
 public:
  explicit RankThreads(int32_t world_size) : results_(world_size) {
    for (int32_t r = 1; r < world_size; ++r) threads_.emplace_back([this, r] { Loop(r); });
  }
  ~RankThreads() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  std::vector<absl::Status> Run(const std::function<absl::Status(int32_t)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      pending_ = static_cast<int32_t>(threads_.size());
      ++generation_;
    }
    work_cv_.notify_all();
    absl::Status first = fn(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    results_[0] = std::move(first);
    job_ = nullptr;
    return results_;
  }

 private:
  void Loop(int32_t rank) {
    uint64_t seen = 0;
    while (true) {
      const std::function<absl::Status(int32_t)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      absl::Status st = (*job)(rank);
      std::lock_guard<std::mutex> lock(mu_);
      results_[rank] = std::move(st);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }

  // std::mutex (not absl::Mutex) so that ThreadSanitizer sees the hand-offs.
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<absl::Status(int32_t)>* job_ = nullptr;  // guarded by mu_
  uint64_t generation_ = 0;                                    // guarded by mu_
  int32_t pending_ = 0;                                        // guarded by mu_
  bool stop_ = false;                                          // guarded by mu_
  std::vector<absl::Status> results_;                          // guarded by mu_
  std::vector<std::thread> threads_;
};

// ---- Per-rank state ----------------------------------------------------------------------------

// The weights one rank holds (copies of its slices; norms are read from the shared weights).
struct TensorParallelCpuExecutor::RankShard {
  int32_t first_q_head = 0, num_q_heads = 0;
  int32_t first_kv_head = 0, num_kv_heads = 0;
  int32_t im_begin = 0, im_size = 0;
  int32_t vocab_begin = 0, vocab_size = 0, vocab_padded = 0;
  std::vector<float> embed;    // [vocab_size, hidden]
  std::vector<float> lm_head;  // [vocab_size, hidden]; empty when tied (embed is the LM head)
  struct Layer {
    std::vector<float> q_proj, k_proj, v_proj;  // [heads * d, hidden]
    std::vector<float> q_bias, k_bias, v_bias;
    std::vector<float> o_proj;              // [hidden, q heads * d]
    std::vector<float> o_bias;              // rank 0 only
    std::vector<float> gate_proj, up_proj;  // [im_size, hidden]
    std::vector<float> gate_bias, up_bias;
    std::vector<float> down_proj;  // [hidden, im_size]
    std::vector<float> down_bias;  // rank 0 only
  };
  std::vector<Layer> layers;
  const float* lm_head_data() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

struct TensorParallelCpuExecutor::RankState {
  RankShard shard;
  Communicator* comm = nullptr;
  std::unique_ptr<DistributedEvictionPlanner> planner;
  // KV storage, indexed by global block id (only this rank's heads' blocks are written).
  std::vector<float> k_cache, v_cache, scores;
  std::vector<int32_t> positions;
  std::unique_ptr<FlatKvSlotReader> reader;
  // Scratch, reused across steps.
  std::vector<std::vector<float>> probs;
  std::vector<float> x, normed, qkv, attn, mlp, logits_in, logits_local, gathered;
};

// What the calling thread prepares for every rank (read-only while the ranks run).
struct TensorParallelCpuExecutor::StepInput {
  std::vector<int64_t> offs;  // sequence s owns token rows [offs[s], offs[s + 1])
  int32_t rows = 0;
  std::vector<int32_t> ids, token_pos;
  std::vector<int64_t> out_rows;  // rows that return logits, in output order
  bool all_small = true;
};

// slot_reader(): routes each block to the storage of the rank that owns it.
class TensorParallelCpuExecutor::Reader final : public KvSlotReader {
 public:
  explicit Reader(const TensorParallelCpuExecutor* ex) : ex_(ex) {}
  float Score(int32_t block, int32_t offset) const override {
    return ex_->ranks_[Rank(block)]->scores[Index(block, offset)];
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    return ex_->ranks_[Rank(block)]->positions[Index(block, offset)];
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    const RankState& st = *ex_->ranks_[Rank(block)];
    const size_t base = Index(block, 0);
    std::memcpy(scores, st.scores.data() + base, sizeof(float) * count);
    std::memcpy(positions, st.positions.data() + base, sizeof(int32_t) * count);
  }

 private:
  // A block nobody has written reads as rank 0's (zero-initialised) storage.
  int32_t Rank(int32_t block) const { return std::max<int32_t>(0, ex_->block_owner_[block]); }
  size_t Index(int32_t block, int32_t offset) const {
    return static_cast<size_t>(block) * ex_->layout_.block_size + offset;
  }
  const TensorParallelCpuExecutor* ex_;
};

// ---- Construction ------------------------------------------------------------------------------

TensorParallelCpuExecutor::TensorParallelCpuExecutor(std::shared_ptr<const ModelWeights> weights,
                                                     KvLayout layout, KvHeadSharding sharding)
    : weights_(std::move(weights)), layout_(layout), sharding_(sharding) {}

TensorParallelCpuExecutor::~TensorParallelCpuExecutor() {
  threads_.reset();  // joins ranks 1..N-1 before their state goes away
}

int64_t TensorParallelCpuExecutor::KvBytesPerBlock(const ModelConfig& config, int32_t block_size,
                                                   int32_t tensor_parallel) {
  return static_cast<int64_t>(tensor_parallel) * block_size *
         (2 * static_cast<int64_t>(config.head_dim) * 4 + 4 + 4);
}

absl::StatusOr<std::unique_ptr<TensorParallelCpuExecutor>> TensorParallelCpuExecutor::Create(
    std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size,
    int32_t tensor_parallel) {
  if (weights == nullptr) {
    return absl::InvalidArgumentError("TensorParallelCpuExecutor: weights are null");
  }
  const ModelConfig& c = weights->config;
  RETURN_IF_ERROR(Annotate(c.Validate(), "TensorParallelCpuExecutor: model config"));
  if (static_cast<int32_t>(weights->layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("TensorParallelCpuExecutor: weights hold ",
                                                   weights->layers.size(), " layers, config ",
                                                   c.num_hidden_layers));
  }
  ASSIGN_OR_RETURN(KvHeadSharding sharding,
                   KvHeadSharding::Create(c.num_key_value_heads, tensor_parallel));
  const int32_t n = tensor_parallel;
  if (c.intermediate_size < n || c.vocab_size < n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel ", n, " exceeds intermediate_size ", c.intermediate_size,
                     " or vocab_size ", c.vocab_size, " (every rank needs a non-empty shard)"));
  }
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks must be >= 1, got ", num_blocks));
  }
  if (block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be >= 1, got ", block_size));
  }
  if (num_blocks > std::numeric_limits<int32_t>::max() ||
      num_blocks > (int64_t{1} << 40) / (static_cast<int64_t>(block_size) * c.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_blocks ", num_blocks, " x block_size ", block_size, " is too large"));
  }
  KvLayout layout;
  layout.num_layers = c.num_hidden_layers;
  layout.num_kv_heads = c.num_key_value_heads;
  layout.head_dim = c.head_dim;
  layout.block_size = block_size;
  layout.num_blocks = num_blocks;
  std::unique_ptr<TensorParallelCpuExecutor> e(
      new TensorParallelCpuExecutor(std::move(weights), layout, sharding));
  const ModelWeights& w = *e->weights_;
  const int32_t h = c.hidden_size, d = c.head_dim, im = c.intermediate_size;
  const int32_t q_per_rank = c.num_attention_heads / n;
  const int32_t kv_per_rank = sharding.heads_per_rank();
  const int32_t vocab_padded = (c.vocab_size + n - 1) / n;
  const int64_t slots = num_blocks * block_size;
  try {
    for (int32_t r = 0; r < n; ++r) {
      auto st = std::make_unique<RankState>();
      RankShard& sh = st->shard;
      sh.first_q_head = r * q_per_rank;
      sh.num_q_heads = q_per_rank;
      sh.first_kv_head = sharding.first_kv_head(r);
      sh.num_kv_heads = kv_per_rank;
      sh.im_begin = static_cast<int32_t>(static_cast<int64_t>(im) * r / n);
      sh.im_size = static_cast<int32_t>(static_cast<int64_t>(im) * (r + 1) / n) - sh.im_begin;
      sh.vocab_begin = std::min(c.vocab_size, r * vocab_padded);
      sh.vocab_size = std::min(c.vocab_size, (r + 1) * vocab_padded) - sh.vocab_begin;
      sh.vocab_padded = vocab_padded;
      sh.embed = RowSlice(w.embed_tokens, h, sh.vocab_begin, sh.vocab_begin + sh.vocab_size);
      if (!c.tie_word_embeddings) {
        sh.lm_head = RowSlice(w.lm_head, h, sh.vocab_begin, sh.vocab_begin + sh.vocab_size);
      }
      const int64_t q0 = static_cast<int64_t>(sh.first_q_head) * d;
      const int64_t q1 = q0 + static_cast<int64_t>(q_per_rank) * d;
      const int64_t k0 = static_cast<int64_t>(sh.first_kv_head) * d;
      const int64_t k1 = k0 + static_cast<int64_t>(kv_per_rank) * d;
      const int64_t i0 = sh.im_begin, i1 = sh.im_begin + sh.im_size;
      for (const LayerWeights& lw : w.layers) {
        RankShard::Layer L;
        L.q_proj = RowSlice(lw.q_proj, h, q0, q1);
        L.k_proj = RowSlice(lw.k_proj, h, k0, k1);
        L.v_proj = RowSlice(lw.v_proj, h, k0, k1);
        L.q_bias = RowSlice(lw.q_bias, 1, q0, q1);
        L.k_bias = RowSlice(lw.k_bias, 1, k0, k1);
        L.v_bias = RowSlice(lw.v_bias, 1, k0, k1);
        L.o_proj = ColSlice(lw.o_proj, h, c.q_size(), q0, q1);
        if (r == 0) L.o_bias = lw.o_bias;
        L.gate_proj = RowSlice(lw.gate_proj, h, i0, i1);
        L.up_proj = RowSlice(lw.up_proj, h, i0, i1);
        L.gate_bias = RowSlice(lw.gate_bias, 1, i0, i1);
        L.up_bias = RowSlice(lw.up_bias, 1, i0, i1);
        L.down_proj = ColSlice(lw.down_proj, h, im, i0, i1);
        if (r == 0) L.down_bias = lw.down_bias;
        sh.layers.push_back(std::move(L));
      }
      st->k_cache.assign(slots * d, 0.0f);
      st->v_cache.assign(slots * d, 0.0f);
      st->scores.assign(slots, 0.0f);
      st->positions.assign(slots, 0);
      st->reader = std::make_unique<FlatKvSlotReader>(st->scores, st->positions, block_size);
      e->ranks_.push_back(std::move(st));
    }
    e->block_owner_.assign(num_blocks, -1);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "TensorParallelCpuExecutor: cannot allocate ", n, " weight shards and KV pools (",
        num_blocks, " blocks of ", block_size, " KVs, head_dim ", d, ")"));
  }
  e->inv_freq_ = RopeInvFreqFor(c, d);
  RETURN_IF_ERROR(e->ResetCommunicators());
  e->slot_reader_ = std::make_unique<Reader>(e.get());
  e->threads_ = std::make_unique<RankThreads>(n);
  return e;
}

absl::Status TensorParallelCpuExecutor::ResetCommunicators() {
  ASSIGN_OR_RETURN(group_, LocalCommunicatorGroup::Create(sharding_.world_size));
  for (int32_t r = 0; r < sharding_.world_size; ++r) {
    ranks_[r]->comm = group_->communicator(r);
    ranks_[r]->planner = std::make_unique<DistributedEvictionPlanner>(ranks_[r]->comm, sharding_);
  }
  return absl::OkStatus();
}

absl::Status TensorParallelCpuExecutor::RunOnRanks(const std::function<absl::Status(int32_t)>& fn) {
  std::vector<absl::Status> results = threads_->Run(fn);
  absl::Status first;
  for (const absl::Status& st : results) {
    if (st.ok()) continue;
    // Prefer the root cause over the ABORTED echoes of the other ranks.
    if (first.ok() || (absl::IsAborted(first) && !absl::IsAborted(st))) first = st;
  }
  if (group_->aborted()) RETURN_IF_ERROR(ResetCommunicators());
  return first;
}

// ---- Storage access ----------------------------------------------------------------------------

const KvSlotReader& TensorParallelCpuExecutor::slot_reader() const { return *slot_reader_; }

int32_t TensorParallelCpuExecutor::OwnerOfBlock(int32_t block) const {
  KVC_CHECK(block >= 0 && block < layout_.num_blocks) << "block " << block;
  return block_owner_[block];
}

std::span<const float> TensorParallelCpuExecutor::k_cache(int32_t rank) const {
  return ranks_.at(rank)->k_cache;
}
std::span<const float> TensorParallelCpuExecutor::v_cache(int32_t rank) const {
  return ranks_.at(rank)->v_cache;
}
std::span<const float> TensorParallelCpuExecutor::scores(int32_t rank) const {
  return ranks_.at(rank)->scores;
}
std::span<const int32_t> TensorParallelCpuExecutor::positions(int32_t rank) const {
  return ranks_.at(rank)->positions;
}

absl::Status TensorParallelCpuExecutor::MoveKvs(std::span<const KvMove> moves) {
  const int32_t bs = layout_.block_size;
  // Validate everything first: nothing moves unless every move is valid.
  std::vector<int16_t> rank_of(moves.size());
  for (size_t i = 0; i < moves.size(); ++i) {
    const KvMove& m = moves[i];
    auto check = [&](int32_t block, int32_t offset, const char* what) -> absl::Status {
      if (block < 0 || block >= layout_.num_blocks || offset < 0 || offset >= bs) {
        return absl::InvalidArgumentError(absl::StrCat("MoveKvs: moves[", i, "] ", what, " (block ",
                                                       block, ", offset ", offset,
                                                       ") is out of range"));
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(check(m.src_block, m.src_offset, "source"));
    RETURN_IF_ERROR(check(m.dst_block, m.dst_offset, "destination"));
    const int16_t src_rank = block_owner_[m.src_block];
    const int16_t dst_rank = block_owner_[m.dst_block];
    if (src_rank < 0) {
      return absl::InvalidArgumentError(absl::StrCat("MoveKvs: moves[", i, "] source block ",
                                                     m.src_block, " holds no KV on any rank"));
    }
    if (dst_rank >= 0 && dst_rank != src_rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoveKvs: moves[", i, "] goes from block ", m.src_block, " (rank ", src_rank,
          ") to block ", m.dst_block, " (rank ", dst_rank, "): a move stays within one head"));
    }
    rank_of[i] = src_rank;
  }
  if (moves.empty()) return absl::OkStatus();
  for (size_t i = 0; i < moves.size(); ++i) block_owner_[moves[i].dst_block] = rank_of[i];
  const int32_t d = layout_.head_dim;
  return RunOnRanks([&](int32_t rank) {
    RankState& st = *ranks_[rank];
    for (size_t i = 0; i < moves.size(); ++i) {
      if (rank_of[i] != rank) continue;
      const KvMove& m = moves[i];
      const int64_t src = static_cast<int64_t>(m.src_block) * bs + m.src_offset;
      const int64_t dst = static_cast<int64_t>(m.dst_block) * bs + m.dst_offset;
      if (src == dst) continue;
      std::memcpy(&st.k_cache[dst * d], &st.k_cache[src * d], sizeof(float) * d);
      std::memcpy(&st.v_cache[dst * d], &st.v_cache[src * d], sizeof(float) * d);
      st.scores[dst] = st.scores[src];
      st.positions[dst] = st.positions[src];
    }
    return absl::OkStatus();
  });
}

// ---- Distributed planning ----------------------------------------------------------------------

absl::StatusOr<EvictionPlan> TensorParallelCpuExecutor::PlanEvictionOnRanks(
    const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
    const EvictionConstraints& constraints) {
  const int32_t n = sharding_.world_size;
  std::vector<absl::StatusOr<RankEvictionPlan>> plans(n, absl::UnknownError("not run"));
  RETURN_IF_ERROR(RunOnRanks([&](int32_t rank) {
    RankState& st = *ranks_[rank];
    plans[rank] =
        st.planner->Plan(layout_, tables, *st.reader, num_tokens, evict_blocks, constraints);
    return plans[rank].status();
  }));
  std::vector<EvictionPlan> locals;
  for (int32_t r = 0; r < n; ++r) {
    KVC_CHECK(plans[r]->blocks_per_head == plans[0]->blocks_per_head)
        << "ranks disagree on the per-head block counts";
    locals.push_back(std::move(plans[r]->local));
  }
  return MergeRankPlans(locals);
}

// ---- Forward -----------------------------------------------------------------------------------

absl::Status TensorParallelCpuExecutor::Forward(const ForwardBatch& batch, ForwardOutput* out) {
  if (out == nullptr) return absl::InvalidArgumentError("Forward: out is null");
  RETURN_IF_ERROR(ValidateForwardBatch(batch, config(), layout()));
  const ModelConfig& c = config();
  const size_t num_seqs = batch.seqs.size();
  StepInput step;
  step.offs.assign(num_seqs + 1, 0);
  for (size_t s = 0; s < num_seqs; ++s) {
    step.offs[s + 1] = step.offs[s] + static_cast<int64_t>(batch.seqs[s].tokens.size());
  }
  if (step.offs[num_seqs] > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("Forward: too many tokens in one batch");
  }
  step.rows = static_cast<int32_t>(step.offs[num_seqs]);
  out->vocab_size = c.vocab_size;
  out->logits.clear();
  if (step.rows == 0) return absl::OkStatus();
  try {
    step.ids.resize(step.rows);
    step.token_pos.resize(step.rows);
    for (size_t s = 0; s < num_seqs; ++s) {
      const ForwardSequence& seq = batch.seqs[s];
      step.all_small = step.all_small && seq.tokens.size() <= kSmallAttentionTokens;
      for (size_t i = 0; i < seq.tokens.size(); ++i) {
        step.ids[step.offs[s] + i] = seq.tokens[i];
        step.token_pos[step.offs[s] + i] = seq.start_position + static_cast<int32_t>(i);
      }
      if (seq.all_logits) {
        for (int64_t r = step.offs[s]; r < step.offs[s + 1]; ++r) step.out_rows.push_back(r);
      } else {
        step.out_rows.push_back(step.offs[s + 1] - 1);
      }
    }
    out->logits.resize(step.out_rows.size() * static_cast<size_t>(c.vocab_size));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Forward: cannot allocate the step's buffers for ", step.rows, " tokens"));
  }
  // The blocks receiving new KVs now belong to the rank of their head.
  const int32_t bs = layout_.block_size;
  for (const ForwardSequence& seq : batch.seqs) {
    const int32_t n = static_cast<int32_t>(seq.tokens.size());
    for (size_t hi = 0; hi < seq.tables->heads.size(); ++hi) {
      const HeadBlockTable& t = seq.tables->heads[hi];
      const int16_t rank =
          static_cast<int16_t>(sharding_.RankOfHeadIndex(static_cast<int32_t>(hi)));
      for (int32_t b = (t.num_kvs - n) / bs; b <= (t.num_kvs - 1) / bs; ++b) {
        block_owner_[t.blocks[b]] = rank;
      }
    }
  }
  return RunOnRanks([&](int32_t rank) { return RankForward(rank, batch, step, out); });
}

absl::Status TensorParallelCpuExecutor::RankForward(int32_t rank, const ForwardBatch& batch,
                                                    const StepInput& step, ForwardOutput* out) {
  RankState& st = *ranks_[rank];
  const RankShard& sh = st.shard;
  Communicator* comm = st.comm;
  const ModelConfig& c = config();
  const ModelWeights& w = *weights_;
  const int32_t h = c.hidden_size, d = c.head_dim, bs = layout_.block_size;
  const int32_t nq = sh.num_q_heads, hkv = sh.num_kv_heads, im = sh.im_size;
  const int32_t qd = nq * d, kvd = hkv * d;
  const int64_t qkv_w = static_cast<int64_t>(qd) + 2 * kvd;
  const int32_t rows = step.rows;
  const size_t num_seqs = batch.seqs.size();
  const int32_t num_out = static_cast<int32_t>(step.out_rows.size());
  const size_t logits_count = static_cast<size_t>(num_out) * sh.vocab_padded;

  try {
    st.x.resize(static_cast<size_t>(rows) * h);
    st.normed.resize(static_cast<size_t>(rows) * h);
    st.qkv.resize(static_cast<size_t>(rows) * qkv_w);
    st.attn.resize(static_cast<size_t>(rows) * qd);
    st.mlp.resize(static_cast<size_t>(rows) * 2 * im);
    st.logits_in.resize(static_cast<size_t>(num_out) * h);
    st.logits_local.assign(logits_count, 0.0f);
    st.gathered.resize(logits_count * sharding_.world_size);
    if (st.probs.size() < num_seqs) st.probs.resize(num_seqs);
  } catch (const std::bad_alloc&) {
    comm->Abort();  // the other ranks must not wait for this one
    return absl::ResourceExhaustedError(
        absl::StrCat("Forward: rank ", rank, " cannot allocate activations for ", rows, " tokens"));
  }

  // Vocab-parallel embedding: the rows of ids this rank holds, zeros elsewhere; summed over ranks
  // (exactly one rank contributes each row, so the sum is exact).
  for (int32_t r = 0; r < rows; ++r) {
    float* dst = st.x.data() + static_cast<int64_t>(r) * h;
    const int32_t id = step.ids[r] - sh.vocab_begin;
    if (id >= 0 && id < sh.vocab_size) {
      std::memcpy(dst, sh.embed.data() + static_cast<int64_t>(id) * h, sizeof(float) * h);
    } else {
      std::fill(dst, dst + h, 0.0f);
    }
  }
  RETURN_IF_ERROR(comm->AllReduceSum(std::span<float>(st.x.data(), static_cast<size_t>(rows) * h)));

  auto matmul = [&](const float* x, int64_t x_stride, int32_t in, const std::vector<float>& wt,
                    const std::vector<float>& bias, int32_t n_out, float* y, int64_t y_stride,
                    bool accumulate) {
    cpu::MatmulParams mp;
    mp.rows = rows;
    mp.in = in;
    mp.out = n_out;
    mp.x = x;
    mp.x_stride = x_stride;
    mp.w = wt.data();
    mp.bias = bias.empty() ? nullptr : bias.data();
    mp.y = y;
    mp.y_stride = y_stride;
    mp.accumulate = accumulate;
    cpu::Matmul(mp);
  };
  auto rms_norm = [&](const std::vector<float>& weight) {
    cpu::RmsNormParams np;
    np.rows = rows;
    np.dim = h;
    np.eps = c.rms_norm_eps;
    np.x = st.x.data();
    np.weight = weight.data();
    np.out = st.normed.data();
    cpu::RmsNorm(np);
  };

  std::vector<std::vector<const int32_t*>> tables(num_seqs, std::vector<const int32_t*>(hkv));
  std::vector<std::vector<int32_t>> counts(num_seqs, std::vector<int32_t>(hkv));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Rank 0 adds the residual stream (and the row-parallel biases); the others contribute their
  // partial products alone. The all-reduce then sums ((x + p0) + p1) + ... in rank order.
  const bool residual = rank == 0;

  for (int32_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const RankShard::Layer& ls = sh.layers[l];
    rms_norm(lw.input_norm);
    float* qkv = st.qkv.data();
    matmul(st.normed.data(), h, h, ls.q_proj, ls.q_bias, qd, qkv, qkv_w, false);
    matmul(st.normed.data(), h, h, ls.k_proj, ls.k_bias, kvd, qkv + qd, qkv_w, false);
    matmul(st.normed.data(), h, h, ls.v_proj, ls.v_bias, kvd, qkv + qd + kvd, qkv_w, false);
    cpu::RopeParams rp;
    rp.num_tokens = rows;
    rp.head_dim = d;
    rp.x = qkv;
    rp.stride = qkv_w;
    rp.positions = step.token_pos.data();
    rp.inv_freq = inv_freq_.data();
    rp.num_heads = nq;
    rp.first_head_offset = 0;
    cpu::Rope(rp);
    rp.num_heads = hkv;
    rp.first_head_offset = qd;
    cpu::Rope(rp);

    // Append this rank's heads' new K/V into its own storage.
    for (size_t s = 0; s < num_seqs; ++s) {
      const ForwardSequence& seq = batch.seqs[s];
      const int32_t n = static_cast<int32_t>(seq.tokens.size());
      for (int32_t j = 0; j < hkv; ++j) {
        const HeadBlockTable& table = seq.tables->heads[layout_.HeadIndex(l, sh.first_kv_head + j)];
        tables[s][j] = table.blocks.data();
        counts[s][j] = table.num_kvs;
        for (int32_t i = 0; i < n; ++i) {
          const int32_t slot = table.num_kvs - n + i;
          const int64_t idx = static_cast<int64_t>(table.blocks[slot / bs]) * bs + slot % bs;
          const float* row = qkv + (step.offs[s] + i) * qkv_w;
          std::memcpy(&st.k_cache[idx * d], row + qd + j * d, sizeof(float) * d);
          std::memcpy(&st.v_cache[idx * d], row + qd + kvd + j * d, sizeof(float) * d);
          st.positions[idx] = seq.start_position + i;
          st.scores[idx] = 0.0f;
        }
      }
    }
    auto attend = [&](size_t s) {
      const ForwardSequence& fs = batch.seqs[s];
      cpu::PagedAttentionParams ap;
      ap.num_queries = static_cast<int32_t>(fs.tokens.size());
      ap.num_q_heads = nq;
      ap.num_kv_heads = hkv;
      ap.head_dim = d;
      ap.block_size = bs;
      ap.scale = scale;
      ap.q = qkv + step.offs[s] * qkv_w;
      ap.q_stride = qkv_w;
      ap.q_positions = step.token_pos.data() + step.offs[s];
      ap.k_cache = st.k_cache.data();
      ap.v_cache = st.v_cache.data();
      ap.kv_positions = st.positions.data();
      ap.block_tables = tables[s].data();
      ap.num_kvs = counts[s].data();
      ap.out = st.attn.data() + step.offs[s] * qd;
      ap.out_stride = qd;
      const int32_t scored = std::min<int32_t>(fs.score_queries, ap.num_queries);
      int32_t max_kvs = 0;
      if (scored > 0) {
        for (int32_t j = 0; j < hkv; ++j) max_kvs = std::max(max_kvs, counts[s][j]);
        st.probs[s].assign(static_cast<size_t>(scored) * nq * max_kvs, 0.0f);
        ap.probs = st.probs[s].data();
        ap.probs_first_query = ap.num_queries - scored;
        ap.probs_stride = max_kvs;
      }
      cpu::PagedAttention(ap);
      if (scored > 0) {
        cpu::KvScoreParams kp;
        kp.num_queries = scored;
        kp.num_q_heads = nq;
        kp.num_kv_heads = hkv;
        kp.block_size = bs;
        kp.pool_kernel = fs.score_pool ? batch.score_pool_kernel : 0;
        kp.probs = st.probs[s].data();
        kp.probs_stride = max_kvs;
        kp.block_tables = tables[s].data();
        kp.num_kvs = counts[s].data();
        kp.scores = st.scores.data();
        cpu::AccumulateKvScores(kp);
      }
    };
    if (step.all_small && num_seqs > 1) {
      cpu::ParallelFor(static_cast<int64_t>(num_seqs), 1, [&](int64_t b, int64_t e) {
        for (int64_t s = b; s < e; ++s) attend(static_cast<size_t>(s));
      });
    } else {
      for (size_t s = 0; s < num_seqs; ++s) attend(s);
    }
    matmul(st.attn.data(), qd, qd, ls.o_proj, ls.o_bias, h, st.x.data(), h, residual);
    RETURN_IF_ERROR(
        comm->AllReduceSum(std::span<float>(st.x.data(), static_cast<size_t>(rows) * h)));

    // MLP: gate and up side by side in mlp [rows, 2 * im]; SwiGLU in place into gate.
    rms_norm(lw.post_norm);
    matmul(st.normed.data(), h, h, ls.gate_proj, ls.gate_bias, im, st.mlp.data(), 2 * im, false);
    matmul(st.normed.data(), h, h, ls.up_proj, ls.up_bias, im, st.mlp.data() + im, 2 * im, false);
    cpu::SwiGluParams sp;
    sp.rows = rows;
    sp.dim = im;
    sp.gate = st.mlp.data();
    sp.gate_stride = 2 * im;
    sp.up = st.mlp.data() + im;
    sp.up_stride = 2 * im;
    sp.out = st.mlp.data();
    sp.out_stride = 2 * im;
    cpu::SwiGlu(sp);
    matmul(st.mlp.data(), 2 * im, im, ls.down_proj, ls.down_bias, h, st.x.data(), h, residual);
    RETURN_IF_ERROR(
        comm->AllReduceSum(std::span<float>(st.x.data(), static_cast<size_t>(rows) * h)));
  }

  // Final norm + this rank's vocab slice of the LM head; an all-gather assembles the rows.
  for (int32_t r = 0; r < num_out; ++r) {
    cpu::RmsNormParams np;
    np.rows = 1;
    np.dim = h;
    np.eps = c.rms_norm_eps;
    np.x = st.x.data() + step.out_rows[r] * h;
    np.weight = w.final_norm.data();
    np.out = st.logits_in.data() + static_cast<int64_t>(r) * h;
    cpu::RmsNorm(np);
  }
  cpu::MatmulParams mp;
  mp.rows = num_out;
  mp.in = h;
  mp.out = sh.vocab_size;
  mp.x = st.logits_in.data();
  mp.w = sh.lm_head_data();
  mp.y = st.logits_local.data();
  mp.y_stride = sh.vocab_padded;
  if (sh.vocab_size > 0) cpu::Matmul(mp);  // the last shards may be empty when N ~ vocab
  RETURN_IF_ERROR(comm->AllGather(st.logits_local, st.gathered));
  if (rank == 0) {
    // gathered[q][row][c] holds vocab id q * vocab_padded + c.
    const int32_t vocab = c.vocab_size;
    for (int32_t q = 0; q < sharding_.world_size; ++q) {
      const int32_t v0 = std::min(vocab, q * sh.vocab_padded);
      const int32_t width = std::min(vocab, (q + 1) * sh.vocab_padded) - v0;
      for (int32_t r = 0; r < num_out; ++r) {
        const float* src =
            st.gathered.data() + (static_cast<size_t>(q) * num_out + r) * sh.vocab_padded;
        std::memcpy(out->logits.data() + static_cast<size_t>(r) * vocab + v0, src,
                    sizeof(float) * width);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc
