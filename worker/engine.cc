#include "worker/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc {

struct Engine::Sequence {
  int64_t id = 0;
  EngineRequest req;
  OutputCallback callback;
  absl::Time arrival;
  std::optional<absl::Time> first_scheduled;
  std::optional<absl::Time> first_token;
  std::vector<int32_t> tokens;  // prompt + generated
  int32_t num_generated = 0;
  int32_t preemptions = 0;
  bool in_kv = false;  // registered with the KvManager
  Rng rng{0};
  uint64_t sample_seed = 0;  // executor sampling: CounterUniform(sample_seed, num_generated)
  uint64_t policy_seed = 0;
};

Engine::Engine(std::unique_ptr<Executor> executor, std::unique_ptr<KvManager> kv,
               EngineOptions options, MetricsRegistry* metrics)
    : executor_(std::move(executor)),
      kv_(std::move(kv)),
      options_(options),
      metrics_(metrics),
      seed_source_(std::random_device{}()) {
  KVC_CHECK(executor_ != nullptr);
  KVC_CHECK(kv_ != nullptr);
  KVC_CHECK_OK(options_.policy_options.Validate());
  for (CompressionPolicyKind k :
       {CompressionPolicyKind::kNone, CompressionPolicyKind::kKvCompress,
        CompressionPolicyKind::kSnapKv, CompressionPolicyKind::kPyramidKv,
        CompressionPolicyKind::kStreaming, CompressionPolicyKind::kRandom}) {
    policies_[k] = MakeCompressionPolicy(k, options_.policy_options);
  }
  RegisterMetrics();
}

Engine::~Engine() { Stop(); }

void Engine::RegisterMetrics() {
  if (metrics_ == nullptr) return;
  running_gauge_ =
      &metrics_->AddGauge("kvc_worker_running_requests", "Requests in the running batch.").Get();
  waiting_gauge_ = &metrics_
                        ->AddGauge("kvc_worker_waiting_requests",
                                   "Requests queued for admission (incl. preempted).")
                        .Get();
  batch_size_hist_ =
      &metrics_
           ->AddHistogram("kvc_worker_batch_size", "Sequences per engine step (prefill + decode).",
                          {1, 2, 4, 8, 16, 32, 64, 128, 256, 512})
           .Get();
  auto& step = metrics_->AddHistogram("kvc_worker_step_seconds",
                                      "Engine step wall time by phase (a step with any prefill "
                                      "counts as prefill).",
                                      MetricsRegistry::LatencyBuckets(), {"phase"});
  step_prefill_hist_ = &step.WithLabels({"prefill"});
  step_decode_hist_ = &step.WithLabels({"decode"});
  prompt_tokens_ = &metrics_
                        ->AddCounter("kvc_worker_prompt_tokens_total",
                                     "Prompt tokens prefilled (recomputation included).")
                        .Get();
  generated_tokens_ =
      &metrics_->AddCounter("kvc_worker_generated_tokens_total", "Tokens generated.").Get();
  preemptions_ =
      &metrics_->AddCounter("kvc_worker_preemptions_total", "Sequences preempted by recompute.")
           .Get();
  compression_hist_ =
      &metrics_
           ->AddHistogram("kvc_worker_compression_seconds",
                          "Time to plan and apply one sequence's compression (selection, "
                          "metadata, compaction moves).",
                          {1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1})
           .Get();
  finished_ = &metrics_->AddCounter("kvc_worker_requests_finished_total",
                                    "Requests finished, by reason (length, stop, eos, abort, "
                                    "error).",
                                    {"reason"});
}

void Engine::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  // Finish whatever is left (also when the engine was driven by StepForTest()).
  DrainInbox();
  while (!running_.empty())
    Finish(running_.back().get(), FinishReason::kAbort, absl::CancelledError("engine stopped"));
  while (!waiting_.empty())
    Finish(waiting_.back().get(), FinishReason::kAbort, absl::CancelledError("engine stopped"));
}

int64_t Engine::BlocksForTokens(int64_t tokens) const {
  const KvLayout& l = kv_->layout();
  return static_cast<int64_t>(l.heads_per_seq()) * ((tokens + l.block_size - 1) / l.block_size);
}

absl::Status Engine::Submit(EngineRequest request, OutputCallback callback) {
  const ModelConfig& cfg = executor_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids[", i, "]: must be in [0, ",
                                                     cfg.vocab_size, "), got ", request.prompt[i]));
    }
  }
  const int64_t ctx = cfg.max_position_embeddings;
  if (static_cast<int64_t>(request.prompt.size()) >= ctx) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", request.prompt.size(),
                                                   " tokens leave no room to generate in the "
                                                   "model's context of ",
                                                   ctx, " tokens"));
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_tokens: must be >= 1, got ", request.max_tokens));
  }
  // Never longer than the context.
  request.max_tokens = static_cast<int32_t>(
      std::min<int64_t>(request.max_tokens, ctx - static_cast<int64_t>(request.prompt.size())));
  const int64_t total = kv_->num_total_blocks();
  const int64_t need_prompt = BlocksForTokens(static_cast<int64_t>(request.prompt.size()) + 1);
  if (need_prompt > total) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt: ", request.prompt.size(), " tokens need ", need_prompt,
        " KV blocks but the worker's pool has only ", total, " (the request can never fit)"));
  }
  RETURN_IF_ERROR(Annotate(request.compression.Validate(kv_->layout()), "compression"));
  if (request.observation_window < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compression.observation_window: must be >= 1, got ", request.observation_window));
  }
  const bool compresses = request.policy != CompressionPolicyKind::kNone &&
                          request.compression.mode != BudgetMode::kNone;
  const int64_t need_all =
      BlocksForTokens(static_cast<int64_t>(request.prompt.size()) + request.max_tokens);
  if (!compresses && need_all > total) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "sampling.max_tokens: prompt + max_tokens = ", request.prompt.size() + request.max_tokens,
        " tokens need ", need_all, " KV blocks but the worker's pool has only ", total,
        " (the request can never finish uncompressed)"));
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("engine is stopping");
  if (!request.request_id.empty() && live_ids_.count(request.request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id: '", request.request_id, "' is already in flight"));
  }
  live_ids_[request.request_id] = 0;
  inbox_.push_back({std::move(request), std::move(callback), absl::Now()});
  num_waiting_++;
  return absl::OkStatus();
}

bool Engine::Abort(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  if (!live_ids_.count(request_id)) return false;
  aborts_.push_back(request_id);
  return true;
}

int32_t Engine::num_running() const {
  absl::MutexLock lock(&mu_);
  return num_running_;
}

int32_t Engine::num_waiting() const {
  absl::MutexLock lock(&mu_);
  return num_waiting_;
}

void Engine::DrainInbox() {
  std::deque<Pending> inbox;
  std::vector<std::string> aborts;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
    aborts.swap(aborts_);
  }
  for (auto& p : inbox) {
    auto seq = std::make_unique<Sequence>();
    seq->id = next_seq_id_++;
    seq->tokens = p.request.prompt;
    uint64_t seed = p.request.seed.has_value() ? *p.request.seed : seed_source_();
    seq->rng = Rng(seed);
    seq->sample_seed = seed;
    seq->policy_seed = seed ^ 0x9e3779b97f4a7c15ull;
    seq->req = std::move(p.request);
    seq->callback = std::move(p.callback);
    seq->arrival = p.arrival;
    // Higher priority first; FIFO within a priority (preempted sequences go to the front).
    auto it = std::find_if(waiting_.begin(), waiting_.end(),
                           [&](const auto& w) { return w->req.priority < seq->req.priority; });
    waiting_.insert(it, std::move(seq));
  }
  for (const auto& id : aborts) {
    Sequence* target = nullptr;
    for (auto& s : running_) {
      if (s->req.request_id == id) target = s.get();
    }
    for (auto& s : waiting_) {
      if (s->req.request_id == id) target = s.get();
    }
    if (target) Finish(target, FinishReason::kAbort, absl::OkStatus());
  }
}

void Engine::Finish(Sequence* seq, FinishReason reason, absl::Status status) {
  lock_prefill_ = false;
  EngineOutput out;
  out.finished = true;
  out.reason = reason;
  out.status = status;
  out.usage.prompt_tokens = static_cast<int32_t>(seq->req.prompt.size());
  out.usage.completion_tokens = seq->num_generated;
  out.usage.preemptions = seq->preemptions;
  if (seq->in_kv) {
    auto usage = kv_->Usage(seq->id);
    KVC_CHECK_OK(usage.status());
    out.usage.kvs_held = usage->kvs_held;
    out.usage.kvs_uncompressed = usage->kvs_uncompressed;
    out.usage.compressions = usage->compressions;
    out.usage.compression_ratio =
        usage->kvs_held > 0 ? static_cast<double>(usage->kvs_uncompressed) / usage->kvs_held : 1.0;
    KVC_CHECK_OK(kv_->FreeSequence(seq->id));
    executor_->ForgetSequence(seq->id);
    seq->in_kv = false;
  }
  absl::Time now = absl::Now();
  out.timings.total_seconds = absl::ToDoubleSeconds(now - seq->arrival);
  if (seq->first_scheduled) {
    out.timings.queue_seconds = absl::ToDoubleSeconds(*seq->first_scheduled - seq->arrival);
  }
  if (seq->first_token) {
    out.timings.first_token_seconds = absl::ToDoubleSeconds(*seq->first_token - seq->arrival);
  }
  if (finished_) {
    static constexpr const char* kNames[] = {"none", "length", "stop", "eos", "abort"};
    finished_->WithLabels({status.ok() ? kNames[static_cast<int>(reason)] : "error"}).Increment();
  }
  seq->callback(std::move(out));
  {
    absl::MutexLock lock(&mu_);
    live_ids_.erase(seq->req.request_id);
  }
  // Remove from whichever queue holds it.
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->get() == seq) {
      running_.erase(it);
      return;
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->get() == seq) {
      waiting_.erase(it);
      return;
    }
  }
}

void Engine::Preempt(Sequence* seq) {
  KVC_LOG(DEBUG) << "preempting " << seq->req.request_id << " (" << seq->tokens.size()
                 << " tokens) by recompute";
  if (seq->in_kv) {
    KVC_CHECK_OK(kv_->FreeSequence(seq->id));
    executor_->ForgetSequence(seq->id);
    seq->in_kv = false;
  }
  kv_->RecordPreemption();
  lock_prefill_ = false;
  seq->preemptions++;
  if (preemptions_) preemptions_->Increment();
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->get() == seq) {
      std::unique_ptr<Sequence> owned = std::move(*it);
      running_.erase(it);
      waiting_.push_front(std::move(owned));
      return;
    }
  }
  KVC_CHECK(false) << "preempted sequence not running";
}

bool Engine::CollectsScores(const Sequence& seq) const {
  if (seq.req.compression.mode == BudgetMode::kNone) return false;
  switch (seq.req.policy) {
    case CompressionPolicyKind::kKvCompress:
    case CompressionPolicyKind::kSnapKv:
    case CompressionPolicyKind::kPyramidKv:
      return true;
    case CompressionPolicyKind::kNone:
    case CompressionPolicyKind::kStreaming:
    case CompressionPolicyKind::kRandom:
      return false;
  }
  return false;
}

int64_t Engine::Compress(Sequence* seq, CompressionTrigger trigger) {
  if (!seq->in_kv || seq->req.policy == CompressionPolicyKind::kNone ||
      seq->req.compression.mode == BudgetMode::kNone) {
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  auto evict = kv_->EvictBlocksForBudget(seq->id, seq->req.compression);
  KVC_CHECK_OK(evict.status());
  if (*evict <= 0) return 0;
  int64_t blocks = *evict;
  if (trigger == CompressionTrigger::kMemoryPressure && options_.pressure_headroom_tokens > 0) {
    // Hysteresis: a decoding sequence outgrows a rate budget by (1 - 1/rate) KVs per head and
    // step, so compressing exactly to the budget under pressure recompresses it every step
    // (measured: 89k compressions for 256 requests of 500 + 500 tokens at rate 2). Evict the
    // growth of the next `pressure_headroom_tokens` steps too; the alternative is preemption.
    const KvLayout& l = kv_->layout();
    const double grow = seq->req.compression.mode == BudgetMode::kRate
                            ? 1.0 - 1.0 / seq->req.compression.compression_rate
                            : 1.0;
    const int64_t per_head =
        static_cast<int64_t>(std::ceil(options_.pressure_headroom_tokens * grow / l.block_size));
    blocks += per_head * l.heads_per_seq();
  }
  absl::StatusOr<EvictionPlan> plan;
  if (seq->req.policy == CompressionPolicyKind::kKvCompress && executor_->evicts_on_device()) {
    // Selection and compaction where the scores live; only per-head block counts come back.
    const SequenceBlockTables* tables = kv_->Tables(seq->id);
    auto usage = kv_->Usage(seq->id);
    KVC_CHECK_OK(usage.status());
    auto counts =
        executor_->EvictOnDevice(*tables, usage->tokens, blocks, seq->req.compression.constraints);
    if (counts.ok()) {
      plan = PlanFromBlockCounts(kv_->layout(), *tables, *counts);
      if (plan.ok()) plan->blocks_requested = blocks;
    } else {
      plan = counts.status();
    }
  } else {
    executor_->slot_reader().Prefetch(*kv_->Tables(seq->id));  // one transfer on a GPU
    plan = PlanSequenceEviction(*kv_, seq->id, executor_->slot_reader(), blocks,
                                seq->req.compression.constraints, seq->policy_seed,
                                *policies_.at(seq->req.policy));
  }
  if (!plan.ok()) {
    KVC_LOG(ERROR) << "compression plan for " << seq->req.request_id
                   << " failed: " << plan.status();
    return 0;
  }
  if (plan->empty()) return 0;
  std::vector<KvMove> moves;
  KVC_CHECK_OK(kv_->ApplyEviction(seq->id, *plan, trigger, &moves));
  // The moves read from blocks the plan just freed: run them before anything is appended.
  KVC_CHECK_OK(executor_->MoveKvs(moves));
  if (compression_hist_) {
    compression_hist_->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return plan->blocks_freed;
}

void Engine::Loop() {
  while (true) {
    const bool busy = !running_.empty() || !waiting_.empty();  // engine-thread state
    {
      absl::MutexLock lock(&mu_);
      if (!busy) {
        auto has_input = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !inbox_.empty() || !aborts_.empty();
        };
        mu_.Await(absl::Condition(&has_input));
      }
      if (stopping_) return;
    }
    Step();
  }
}

bool Engine::StepForTest() { return Step(); }

bool Engine::Step() {
  DrainInbox();
  if (running_.empty() && waiting_.empty()) {
    absl::MutexLock lock(&mu_);
    num_running_ = 0;
    num_waiting_ = static_cast<int32_t>(inbox_.size());
    return false;
  }
  const auto step_start = std::chrono::steady_clock::now();

  step_count_++;
  // 0. Decode growth: sequences that compress continually (or on the interval) go back to budget.
  const bool interval_due =
      options_.compression_interval > 0 && step_count_ % options_.compression_interval == 0;
  for (auto& s : running_) {
    if (s->req.continual) {
      Compress(s.get(), CompressionTrigger::kContinual);
    } else if (interval_due) {
      Compress(s.get(), CompressionTrigger::kInterval);
    }
  }

  // 1. Decode reservations for running sequences. When they don't fit: compress over-budget
  //    sequences first (and hold back new prefills: anti-thrash), then preempt the newest.
  while (!running_.empty()) {
    auto need = [this] {
      int64_t n = 0;
      for (auto& s : running_) n += kv_->BlocksNeededToAppend(s->id, 1);
      return n;
    };
    if (need() <= kv_->num_free_blocks()) break;
    bool freed = false;
    for (auto& s : running_) {
      if (Compress(s.get(), CompressionTrigger::kMemoryPressure) > 0) {
        freed = true;
        if (need() <= kv_->num_free_blocks()) break;
      }
    }
    if (freed) {
      lock_prefill_ = true;
      continue;
    }
    if (running_.size() == 1) {
      // Cannot happen for requests that passed Submit()'s fit check; guard against loops.
      Finish(running_.front().get(), FinishReason::kLength,
             absl::ResourceExhaustedError("KV pool exhausted by a single sequence"));
      break;
    }
    Preempt(running_.back().get());
  }
  std::vector<Sequence*> decode;
  for (auto& s : running_) {
    KVC_CHECK_OK(kv_->Append(s->id, 1));
    decode.push_back(s.get());
  }

  // 2. Admission of waiting sequences (prefill), by free blocks with a watermark.
  std::vector<Sequence*> prefill;
  const int64_t watermark_blocks =
      static_cast<int64_t>(options_.watermark * static_cast<double>(kv_->num_total_blocks()));
  int64_t prefill_tokens = 0;
  while (!waiting_.empty() && !(lock_prefill_ && !running_.empty()) &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence* s = waiting_.front().get();
    const int64_t n = static_cast<int64_t>(s->tokens.size());
    if (!prefill.empty() && prefill_tokens + n > options_.max_prefill_tokens) break;
    const int64_t need = BlocksForTokens(n + 1);
    const int64_t reserve = running_.empty() ? 0 : watermark_blocks;
    if (kv_->num_free_blocks() - need < reserve) break;
    KVC_CHECK_OK(kv_->AddSequence(s->id));
    s->in_kv = true;
    KVC_CHECK_OK(kv_->Append(s->id, static_cast<int32_t>(n)));
    if (!s->first_scheduled) s->first_scheduled = absl::Now();
    prefill_tokens += n;
    prefill.push_back(s);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }

  // 3. One forward pass over the mixed batch.
  ForwardBatch batch;
  batch.score_pool_kernel = options_.score_pool_kernel;
  for (Sequence* s : prefill) {
    ForwardSequence f;
    f.seq_id = s->id;
    f.tokens = std::span<const int32_t>(s->tokens);
    f.start_position = 0;
    f.tables = kv_->Tables(s->id);
    if (CollectsScores(*s)) {
      f.score_queries =
          std::min<int32_t>(s->req.observation_window, static_cast<int32_t>(s->tokens.size()));
      f.score_pool = true;
    }
    batch.seqs.push_back(f);
  }
  for (Sequence* s : decode) {
    ForwardSequence f;
    f.seq_id = s->id;
    f.tokens = std::span<const int32_t>(s->tokens).subspan(s->tokens.size() - 1, 1);
    f.start_position = static_cast<int32_t>(s->tokens.size()) - 1;
    f.tables = kv_->Tables(s->id);
    f.score_queries = options_.decode_scores && CollectsScores(*s) ? 1 : 0;
    batch.seqs.push_back(f);
  }
  std::vector<Sequence*> order = prefill;
  order.insert(order.end(), decode.begin(), decode.end());
  // Sampling in the executor (one device->host copy of the tokens instead of the logits).
  const bool executor_samples = executor_->samples_tokens();
  if (executor_samples) {
    batch.return_logits = false;
    for (size_t i = 0; i < order.size(); ++i) {
      ForwardSequence& f = batch.seqs[i];
      f.sample = true;
      f.sampling = order[i]->req.sampling;
      f.sample_seed = order[i]->sample_seed;
      f.sample_counter = static_cast<uint64_t>(order[i]->num_generated);
    }
  }
  if (!batch.seqs.empty()) {
    ForwardOutput out;
    absl::Status st = executor_->Forward(batch, &out);
    if (!st.ok()) {
      KVC_LOG(ERROR) << "forward failed: " << st;
      for (Sequence* s : order) Finish(s, FinishReason::kNone, Annotate(st, "executor"));
    } else {
      const ModelConfig& cfg = executor_->config();
      const int32_t vocab = out.vocab_size;
      for (size_t i = 0; i < order.size(); ++i) {
        Sequence* s = order[i];
        int32_t tok;
        if (executor_samples) {
          tok = out.tokens[i];
        } else {
          std::span<const float> row(out.logits.data() + i * vocab, vocab);
          tok = SampleToken(row, s->req.sampling, &s->rng);
        }
        s->tokens.push_back(tok);
        s->num_generated++;
        if (!s->first_token) s->first_token = absl::Now();
        if (generated_tokens_) generated_tokens_->Increment();
        EngineOutput o;
        o.tokens.push_back(tok);
        s->callback(std::move(o));
        FinishReason reason = FinishReason::kNone;
        if (std::find(s->req.stop_token_ids.begin(), s->req.stop_token_ids.end(), tok) !=
            s->req.stop_token_ids.end()) {
          reason = FinishReason::kStop;
        } else if (!s->req.ignore_eos &&
                   std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), tok) !=
                       cfg.eos_token_ids.end()) {
          reason = FinishReason::kEos;
        } else if (s->num_generated >= s->req.max_tokens ||
                   static_cast<int64_t>(s->tokens.size()) >= cfg.max_position_embeddings) {
          reason = FinishReason::kLength;
        }
        if (reason != FinishReason::kNone) {
          Finish(s, reason, absl::OkStatus());
        } else if (i < prefill.size()) {
          // Compress right after the prefill, in the same step, so the freed blocks admit more.
          Compress(s, CompressionTrigger::kPrefill);
        }
      }
    }
  }
  if (prompt_tokens_) prompt_tokens_->Increment(static_cast<double>(prefill_tokens));

  if (options_.check_invariants) KVC_CHECK_OK(kv_->CheckInvariants());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
  if (batch_size_hist_ && !order.empty()) {
    batch_size_hist_->Observe(static_cast<double>(order.size()));
    (prefill.empty() ? step_decode_hist_ : step_prefill_hist_)->Observe(secs);
  }
  {
    absl::MutexLock lock(&mu_);
    num_running_ = static_cast<int32_t>(running_.size());
    num_waiting_ = static_cast<int32_t>(waiting_.size() + inbox_.size());
    if (running_gauge_) running_gauge_->Set(num_running_);
    if (waiting_gauge_) waiting_gauge_->Set(num_waiting_);
  }
  return true;
}

}  // namespace kvc
