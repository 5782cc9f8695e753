// Engine: the worker's continuous-batching loop over one Executor and one KvManager.
//
// Requests are submitted from any thread (the gRPC service); one engine thread owns the
// scheduler state, the KvManager's mutations and the executor. Each step it:
//   1. takes new requests and aborts off the inbox;
//   2. schedules: running sequences decode one token each; if their next blocks don't fit,
//      the newest running sequence is preempted by recompute (blocks freed, re-queued at the front
//      with its generated tokens); waiting requests are admitted by free blocks (with a watermark)
//      up to max_num_seqs and a per-step prefill token budget;
//   3. runs one Forward() over the mixed prefill + decode batch, samples, streams tokens out;
//   4. finishes sequences (max_tokens, EOS, stop ids, abort, error) and returns their blocks.
// A request that can never fit (prompt blocks > pool) is rejected by Submit() at once.
//
// Outputs are delivered through the request's callback, on the engine thread: callbacks must be
// quick and must not call back into the engine. Every sequence gets exactly one final output.
#ifndef KVC_WORKER_ENGINE_H_
#define KVC_WORKER_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/compression_policy.h"
#include "kvmanager/kv_manager.h"
#include "worker/executor.h"

namespace kvc {

enum class FinishReason { kNone = 0, kLength = 1, kStop = 2, kEos = 3, kAbort = 4 };

struct EngineRequest {
  std::string request_id;
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
  std::optional<uint64_t> seed;  // unset: drawn from the engine's random device
  int32_t max_tokens = 256;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t priority = 0;
  // KV-Compress, already resolved against the server's defaults (WorkerService does this).
  CompressionPolicyKind policy = CompressionPolicyKind::kNone;
  CompressionSettings compression;  // budget + constraints; mode kNone never evicts
  int32_t observation_window = 32;  // w: last prompt queries that score the prompt's KVs
  bool continual = true;            // re-compress to the budget during decode
};

struct EngineUsage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int64_t kvs_held = 0;
  int64_t kvs_uncompressed = 0;
  double compression_ratio = 1.0;
  int32_t preemptions = 0;
  int32_t compressions = 0;
};

struct EngineTimings {
  double queue_seconds = 0;
  double first_token_seconds = 0;
  double total_seconds = 0;
};

// One streamed chunk. `finished` is set exactly once, on the last output of a request; then
// `reason`, `usage` and `timings` are filled, and `status` is non-OK if the request failed.
struct EngineOutput {
  std::vector<int32_t> tokens;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;
  EngineUsage usage;
  EngineTimings timings;
};

using OutputCallback = std::function<void(EngineOutput)>;

struct EngineOptions {
  int32_t max_num_seqs = 64;          // running sequences at most
  int32_t max_prefill_tokens = 4096;  // prompt tokens prefilled per step (at least one prompt)
  double watermark = 0.01;            // fraction of blocks kept free at admission
  bool check_invariants = false;      // KvManager::CheckInvariants() after every step (tests)
  // KV-Compress scoring and triggers (docs/design/eviction.md).
  bool decode_scores = true;         // decode queries add their squared probabilities
  int32_t score_pool_kernel = 7;     // max-pool kernel of prefill scores (0/1 = off)
  int32_t compression_interval = 0;  // also compress over-budget sequences every N steps
  // Under memory pressure an over-budget sequence is compressed below its budget by the growth
  // of this many further decode steps (hysteresis; 0 = exactly to the budget).
  int32_t pressure_headroom_tokens = 32;
  CompressionPolicyOptions policy_options;
};

class Engine {
 public:
  // Takes ownership of both. The engine thread starts in Start().
  Engine(std::unique_ptr<Executor> executor, std::unique_ptr<KvManager> kv, EngineOptions options,
         MetricsRegistry* metrics);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void Start();
  // Finishes every request with ABORT/CANCELLED and joins the engine thread.
  void Stop();

  // Validates and enqueues. Errors (returned here, the callback is never called): empty prompt,
  // duplicate id (ALREADY_EXISTS), ids out of vocab / prompt too long (INVALID_ARGUMENT), a prompt
  // that can never fit in the KV pool (RESOURCE_EXHAUSTED), engine stopped (UNAVAILABLE).
  absl::Status Submit(EngineRequest request, OutputCallback callback);
  // Aborts a queued or running request; its final output has reason kAbort. Returns false if
  // the id is unknown (already finished).
  bool Abort(const std::string& request_id);

  const Executor& executor() const { return *executor_; }
  // Thread-safe read access (Stats / capacity); mutations happen on the engine thread only.
  const KvManager& kv_manager() const { return *kv_; }
  const EngineOptions& options() const { return options_; }
  int32_t num_running() const;
  int32_t num_waiting() const;

  // Runs one engine step on the calling thread (tests drive the engine without its thread).
  // Returns false when there was nothing to do.
  bool StepForTest();

 private:
  struct Sequence;
  void Loop();
  bool Step();
  void DrainInbox();
  void Finish(Sequence* seq, FinishReason reason, absl::Status status);
  void Preempt(Sequence* seq);
  // Compresses `seq` to its budget with its policy; returns the blocks freed (0 if none).
  int64_t Compress(Sequence* seq, CompressionTrigger trigger);
  bool CollectsScores(const Sequence& seq) const;
  int64_t BlocksForTokens(int64_t tokens) const;
  void RegisterMetrics();

  std::unique_ptr<Executor> executor_;
  std::unique_ptr<KvManager> kv_;
  const EngineOptions options_;
  MetricsRegistry* metrics_;

  mutable absl::Mutex mu_;
  struct Pending {
    EngineRequest request;
    OutputCallback callback;
    absl::Time arrival;
  };
  std::deque<Pending> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> aborts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> live_ids_ ABSL_GUARDED_BY(mu_);  // request id -> seq id
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int32_t num_running_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t num_waiting_ ABSL_GUARDED_BY(mu_) = 0;

  // Engine-thread state.
  int64_t next_seq_id_ = 1;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::thread thread_;
  std::mt19937_64 seed_source_;
  std::map<CompressionPolicyKind, std::unique_ptr<CompressionPolicy>> policies_;
  // Anti-thrash (spec §5.1): set when memory pressure forced a compression; blocks admission of
  // new prefills until a sequence finishes or is preempted.
  bool lock_prefill_ = false;
  int64_t step_count_ = 0;

  // Metrics (owned by metrics_).
  Gauge* running_gauge_ = nullptr;
  Gauge* waiting_gauge_ = nullptr;
  Histogram* batch_size_hist_ = nullptr;
  Histogram* step_prefill_hist_ = nullptr;
  Histogram* step_decode_hist_ = nullptr;
  Counter* prompt_tokens_ = nullptr;
  Counter* generated_tokens_ = nullptr;
  Counter* preemptions_ = nullptr;
  Family<Counter>* finished_ = nullptr;
  Histogram* compression_hist_ = nullptr;
};

}  // namespace kvc

#endif  // KVC_WORKER_ENGINE_H_
