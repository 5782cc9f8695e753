// kvc-bench-throughput: the KV-Compress paper's throughput experiment (reference/kvcompress-spec.md
// §6.4) on the in-process Engine — no gRPC in the timed path.
//
// N prompts of --input-len tokens (random token ids from --seed, or one repeated token as in the
// paper), --output-len tokens each with ignore_eos, all submitted at once; the bench thread
// drives the engine with StepForTest() (no engine thread) and times every step. One run per
// compression rate in --rates, each over a fresh Engine and KvManager but the SAME executor
// (weights and KV storage are built once; an adapter lends it to each Engine). Rate 1 runs with
// compression off (policy none: no scores are collected, nothing is evicted); rates > 1 use
// --policy with a rate budget, compression right after prefill and under memory pressure only
// (EngineRequest::continual = false, no interval) — the paper's `--kvc-interval 1e6`.
//
// Reports per run: total throughput ((prompt + output tokens) / wall time), decode throughput
// (tokens generated in decode-only steps / wall time of those steps), mean and max decode batch,
// preemptions, compressions by trigger, time in compression (the engine's
// kvc_worker_compression_seconds histogram: selection + metadata + compaction), time in steps
// with a prefill, wall time, and the speed-up over the rate-1 run of the same invocation.
// Appends one JSON line per run to --json, re-plots every run of that file (throughput and max
// decode batch against compression rate, one line per input/output length) to --plot, and prints
// a markdown table. Exit status 1 when a run fails or a request does not finish cleanly.
//
//   kvc-bench-throughput (--model DIR | --config config.json --random-weights)
//       [--backend auto|cuda|cpu] [--kv-cache-memory 5GiB | --num-blocks N | --fit-uncompressed N]
//       [--rates 1,2,4,8 | --compression-rate R] [--policy kvcompress] [--protected-window 32]
//       [--num-prompts 256] [--input-len 500] [--output-len 500] [--max-num-seqs 256]
//       [--max-prefill-tokens 8192] [--block-size 16] [--temperature 1.0] [--seed 1]
//       [--prompt random|repeat] [--warmup 1] [--json FILE] [--plot FILE.png] [--label TEXT]
//
// Not a test: numbers, not assertions (bench/throughput/throughput_smoke_test.cc checks the
// bookkeeping on the CPU backend).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/eval/plot.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/status_macros.h"
#include "kvmanager/compression_policy.h"
#include "model/config.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "worker/cpu_executor.h"
#include "worker/engine.h"
#include "worker/executor.h"
#if defined(KVC_HAS_CUDA_EXECUTOR)
#include <cuda_runtime.h>

#include "worker/cuda_executor.h"
#endif

namespace kvc {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Options {
  std::string model_dir;
  std::string config_path;
  bool random_weights = false;
  std::string backend = "auto";
  int64_t kv_cache_memory = 5ll << 30;
  int64_t num_blocks = 0;
  int32_t fit_uncompressed = 0;
  std::vector<double> rates = {1, 2, 4, 8, 16, 32, 64};
  std::string policy = "kvcompress";
  int32_t protected_window = 32;
  int32_t observation_window = 32;
  int32_t decode_scores = 1;      // decode queries add their attention to the scores (engine)
  int32_t score_pool_kernel = 7;  // max-pool kernel of prefill scores
  int32_t num_prompts = 256;
  int32_t input_len = 500;
  int32_t output_len = 500;
  int32_t max_num_seqs = 256;
  int32_t max_prefill_tokens = 8192;
  int32_t block_size = 16;
  float temperature = 1.0f;
  uint64_t seed = 1;
  std::string prompt = "random";
  bool warmup = true;
  std::string json;
  std::string plot;
  std::string label;
};

constexpr char kUsage[] =
    "usage: kvc-bench-throughput (--model DIR | --config config.json --random-weights)\n"
    "  [--backend auto|cuda|cpu] [--kv-cache-memory BYTES (e.g. 5GiB) | --num-blocks N |\n"
    "   --fit-uncompressed N] [--rates 1,2,4,... | --compression-rate R] [--policy kvcompress]\n"
    "  [--protected-window 32] [--observation-window 32] [--decode-scores 1|0]\n"
    "  [--score-pool-kernel 7] [--num-prompts 256] [--input-len 500]\n"
    "  [--output-len 500] [--max-num-seqs 256] [--max-prefill-tokens 8192] [--block-size 16]\n"
    "  [--temperature 1.0] [--seed 1] [--prompt random|repeat] [--warmup 0|1] [--json FILE]\n"
    "  [--plot FILE.png] [--label TEXT]\n";

// "5GiB", "512MiB", "1e9", "4096" -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  absl::string_view s = text;
  double mult = 1;
  const std::pair<const char*, double> suffixes[] = {{"GiB", 1024.0 * 1024 * 1024},
                                                     {"MiB", 1024.0 * 1024},
                                                     {"KiB", 1024.0},
                                                     {"GB", 1e9},
                                                     {"MB", 1e6},
                                                     {"KB", 1e3},
                                                     {"G", 1024.0 * 1024 * 1024},
                                                     {"M", 1024.0 * 1024},
                                                     {"K", 1024.0}};
  for (const auto& [suffix, m] : suffixes) {
    if (absl::ConsumeSuffix(&s, suffix)) {
      mult = m;
      break;
    }
  }
  double v;
  if (!absl::SimpleAtod(s, &v) || !(v > 0) || v * mult > 9e18) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-memory: expected a positive size such as 5GiB, got '", text, "'"));
  }
  return static_cast<int64_t>(v * mult);
}

absl::StatusOr<Options> ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (a == "--random-weights") {
      o.random_weights = true;
      continue;
    }
    if (i + 1 >= argc) return absl::InvalidArgumentError(a + ": needs a value");
    const std::string v = argv[++i];
    auto int32 = [&](int32_t* out, int32_t min) -> absl::Status {
      if (!absl::SimpleAtoi(v, out) || *out < min) {
        return absl::InvalidArgumentError(
            absl::StrCat(a, ": expected an integer >= ", min, ", got '", v, "'"));
      }
      return absl::OkStatus();
    };
    if (a == "--model") {
      o.model_dir = v;
    } else if (a == "--config") {
      o.config_path = v;
    } else if (a == "--backend") {
      if (v != "auto" && v != "cuda" && v != "cpu") {
        return absl::InvalidArgumentError("--backend: must be auto, cuda or cpu, got '" + v + "'");
      }
      o.backend = v;
    } else if (a == "--kv-cache-memory") {
      ASSIGN_OR_RETURN(o.kv_cache_memory, ParseBytes(v));
    } else if (a == "--num-blocks") {
      if (!absl::SimpleAtoi(v, &o.num_blocks) || o.num_blocks < 1) {
        return absl::InvalidArgumentError("--num-blocks: expected an integer >= 1, got '" + v +
                                          "'");
      }
    } else if (a == "--fit-uncompressed") {
      RETURN_IF_ERROR(int32(&o.fit_uncompressed, 1));
    } else if (a == "--rates" || a == "--compression-rate") {
      o.rates.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        double r;
        if (!absl::SimpleAtod(s, &r) || !(r >= 1) || !std::isfinite(r)) {
          return absl::InvalidArgumentError(
              absl::StrCat(a, ": each rate must be a finite number >= 1, got '", v, "'"));
        }
        o.rates.push_back(r);
      }
    } else if (a == "--policy") {
      o.policy = v;
    } else if (a == "--protected-window") {
      RETURN_IF_ERROR(int32(&o.protected_window, 0));
    } else if (a == "--observation-window") {
      RETURN_IF_ERROR(int32(&o.observation_window, 1));
    } else if (a == "--decode-scores") {
      RETURN_IF_ERROR(int32(&o.decode_scores, 0));
    } else if (a == "--score-pool-kernel") {
      RETURN_IF_ERROR(int32(&o.score_pool_kernel, 0));
    } else if (a == "--num-prompts") {
      RETURN_IF_ERROR(int32(&o.num_prompts, 1));
    } else if (a == "--input-len") {
      RETURN_IF_ERROR(int32(&o.input_len, 1));
    } else if (a == "--output-len") {
      RETURN_IF_ERROR(int32(&o.output_len, 1));
    } else if (a == "--max-num-seqs") {
      RETURN_IF_ERROR(int32(&o.max_num_seqs, 1));
    } else if (a == "--max-prefill-tokens") {
      RETURN_IF_ERROR(int32(&o.max_prefill_tokens, 1));
    } else if (a == "--block-size") {
      RETURN_IF_ERROR(int32(&o.block_size, 1));
    } else if (a == "--temperature") {
      if (!absl::SimpleAtof(v, &o.temperature) || !(o.temperature >= 0)) {
        return absl::InvalidArgumentError("--temperature: expected a number >= 0, got '" + v + "'");
      }
    } else if (a == "--seed") {
      if (!absl::SimpleAtoi(v, &o.seed)) {
        return absl::InvalidArgumentError("--seed: expected an unsigned integer, got '" + v + "'");
      }
    } else if (a == "--prompt") {
      if (v != "random" && v != "repeat") {
        return absl::InvalidArgumentError("--prompt: must be random or repeat, got '" + v + "'");
      }
      o.prompt = v;
    } else if (a == "--warmup") {
      if (v != "0" && v != "1") return absl::InvalidArgumentError("--warmup: must be 0 or 1");
      o.warmup = v == "1";
    } else if (a == "--json") {
      o.json = v;
    } else if (a == "--plot") {
      o.plot = v;
    } else if (a == "--label") {
      o.label = v;
    } else {
      return absl::InvalidArgumentError("unknown option " + a);
    }
  }
  if (o.model_dir.empty() && o.config_path.empty()) {
    return absl::InvalidArgumentError("give --model DIR or --config config.json --random-weights");
  }
  if (!o.model_dir.empty() && !o.config_path.empty()) {
    return absl::InvalidArgumentError("--model and --config are exclusive");
  }
  if (!o.config_path.empty() && !o.random_weights) {
    return absl::InvalidArgumentError("--config needs --random-weights (it has no weights)");
  }
  if (o.block_size > 256) return absl::InvalidArgumentError("--block-size: must be <= 256");
  RETURN_IF_ERROR(Annotate(ParseCompressionPolicy(o.policy).status(), "--policy"));
  return o;
}

// Lends one executor to several Engines in turn (Engine takes ownership of its executor; this
// adapter owns nothing). Every virtual of Executor is forwarded: when Executor gains one, add it
// here, or the engine sees the interface's default instead of the real executor's behaviour.
class BorrowedExecutor final : public Executor {
 public:
  explicit BorrowedExecutor(Executor* e) : e_(e) {}
  const ModelConfig& config() const override { return e_->config(); }
  const KvLayout& layout() const override { return e_->layout(); }
  std::string backend() const override { return e_->backend(); }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    return e_->Forward(batch, out);
  }
  const KvSlotReader& slot_reader() const override { return e_->slot_reader(); }
  absl::Status MoveKvs(std::span<const KvMove> moves) override { return e_->MoveKvs(moves); }
  void ForgetSequence(int64_t seq_id) override { e_->ForgetSequence(seq_id); }
  bool samples_tokens() const override { return e_->samples_tokens(); }
  bool evicts_on_device() const override { return e_->evicts_on_device(); }
  absl::StatusOr<std::vector<int32_t>> EvictOnDevice(
      const SequenceBlockTables& tables, int64_t num_tokens, int64_t evict_blocks,
      const EvictionConstraints& constraints) override {
    return e_->EvictOnDevice(tables, num_tokens, evict_blocks, constraints);
  }

 private:
  Executor* e_;
};

int CudaDevices() {
#if defined(KVC_HAS_CUDA_EXECUTOR)
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string CudaDeviceName() {
#if defined(KVC_HAS_CUDA_EXECUTOR)
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
    return absl::StrFormat("%s (%.1f GiB)", p.name,
                           static_cast<double>(p.totalGlobalMem) / (1ll << 30));
  }
#endif
  return "unknown CUDA device";
}

struct Setup {
  std::unique_ptr<Executor> executor;
  std::string backend;
  std::string device;
  std::string model;
  int64_t num_blocks = 0;
  int64_t bytes_per_block = 0;
  double create_seconds = 0;
};

// Builds the executor once: weights (loaded or random), KV storage sized from the options.
absl::StatusOr<Setup> BuildExecutor(const Options& o) {
  const std::string cfg_path = o.config_path.empty() ? o.model_dir + "/config.json" : o.config_path;
  ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfig::FromJsonFile(cfg_path));
  if (!o.config_path.empty()) {
    // FromJsonFile names the model after the directory; a bench config is named by its file.
    std::string base = o.config_path.substr(o.config_path.find_last_of('/') + 1);
    absl::string_view stem = base;
    absl::ConsumeSuffix(&stem, ".json");
    cfg.name = std::string(stem);
  }
  Setup s;
  s.model = cfg.name + " (" + cfg.architecture + ", " + std::to_string(cfg.num_hidden_layers) +
            " layers, " + std::to_string(cfg.num_attention_heads) + " q / " +
            std::to_string(cfg.num_key_value_heads) + " kv heads x " +
            std::to_string(cfg.head_dim) + ", " + (o.random_weights ? "random" : "loaded") +
            " weights)";
#if defined(KVC_HAS_CUDA_EXECUTOR)
  const bool cuda = o.backend == "cuda" || (o.backend == "auto" && CudaDevices() > 0);
#else
  if (o.backend == "cuda") {
    return absl::UnimplementedError(
        "--backend cuda: this kvc-bench-throughput was built without CUDA (KVC_ENABLE_CUDA=OFF)");
  }
  const bool cuda = false;
#endif
  s.backend = cuda ? "cuda" : "cpu";
  // Pool bytes per block: CPU = fp32 K and V rows + fp32 score + int32 position per slot.
  s.bytes_per_block = static_cast<int64_t>(o.block_size) * (2 * int64_t{cfg.head_dim} * 4 + 8);
#if defined(KVC_HAS_CUDA_EXECUTOR)
  if (cuda) s.bytes_per_block = CudaExecutor::BytesPerBlock(cfg, o.block_size);
#endif
  const int64_t heads = int64_t{cfg.num_hidden_layers} * cfg.num_key_value_heads;
  if (o.num_blocks > 0) {
    s.num_blocks = o.num_blocks;
  } else if (o.fit_uncompressed > 0) {
    s.num_blocks = heads * ((o.input_len + o.output_len + o.block_size - 1) / o.block_size) *
                   o.fit_uncompressed;
  } else {
    s.num_blocks = o.kv_cache_memory / s.bytes_per_block;
  }
  if (s.num_blocks < 1) return absl::InvalidArgumentError("--kv-cache-memory: pool has no blocks");

  const auto t0 = Clock::now();
  std::shared_ptr<const ModelWeights> weights;
  if (!cuda || !o.random_weights) {
    if (o.random_weights) {
      ASSIGN_OR_RETURN(auto w, ModelWeights::Random(cfg, o.seed));
      weights = std::make_shared<const ModelWeights>(std::move(w));
    } else {
      ASSIGN_OR_RETURN(weights, LoadModel(o.model_dir));
    }
  }
#if defined(KVC_HAS_CUDA_EXECUTOR)
  if (cuda) {
    s.device = CudaDeviceName();
    if (o.random_weights) {
      ASSIGN_OR_RETURN(s.executor,
                       CudaExecutor::CreateRandom(cfg, o.seed, s.num_blocks, o.block_size));
    } else {
      ASSIGN_OR_RETURN(s.executor, CudaExecutor::Create(weights, s.num_blocks, o.block_size));
    }
  }
#endif
  if (!cuda) {
    s.device = HostCpuName();
    ASSIGN_OR_RETURN(s.executor, CpuExecutor::Create(weights, s.num_blocks, o.block_size));
  }
  s.create_seconds = Seconds(t0, Clock::now());
  return s;
}

struct RunResult {
  double rate = 1;
  std::string policy;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int32_t finished_ok = 0;
  int32_t failed = 0;
  double wall_seconds = 0;
  double total_tok_s = 0;
  // Steps with at least one prefill ("mixed") and decode-only steps.
  int64_t steps = 0;
  int64_t prefill_steps = 0;
  double prefill_seconds = 0;
  int64_t decode_steps = 0;
  double decode_seconds = 0;
  int64_t decode_step_tokens = 0;
  double decode_tok_s = 0;
  double mean_decode_batch = 0;
  int32_t max_decode_batch = 0;
  int64_t preemptions = 0;
  std::map<std::string, int64_t> compressions;  // by trigger
  int64_t compressions_total = 0;
  int64_t evicted_kvs = 0;
  double compression_seconds = 0;
  int64_t compression_count = 0;
  double mean_final_ratio = 1;
  double speedup = 0;  // total_tok_s / that of the rate-1 run (0 = no rate-1 run)
};

// The value of an unlabelled sample `name` in Prometheus text (0 when absent).
double MetricValue(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(name.size() + 1), &v)) return v;
    }
  }
  return 0;
}

std::vector<std::vector<int32_t>> MakePrompts(const Options& o, int32_t vocab, int32_t n,
                                              int32_t len) {
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> tok(3, vocab - 1);
  std::vector<std::vector<int32_t>> prompts(n);
  const int32_t repeated = std::min<int32_t>(vocab - 1, 6151);  // "hi" in Llama 3's vocabulary
  for (auto& p : prompts) {
    p.resize(len);
    for (auto& t : p) t = o.prompt == "repeat" ? repeated : tok(rng);
  }
  return prompts;
}

// One run: a fresh KvManager and Engine over the shared executor; every prompt submitted at once,
// then StepForTest() until the engine is idle.
absl::StatusOr<RunResult> RunOnce(Executor* shared, const Options& o, double rate,
                                  int32_t num_prompts, int32_t output_len) {
  const CompressionPolicyKind policy =
      rate > 1 ? *ParseCompressionPolicy(o.policy) : CompressionPolicyKind::kNone;
  KvManagerOptions ko;
  ko.layout = shared->layout();
  ASSIGN_OR_RETURN(auto kv, KvManager::Create(ko));
  MetricsRegistry metrics;
  EngineOptions eo;
  eo.max_num_seqs = o.max_num_seqs;
  eo.max_prefill_tokens = o.max_prefill_tokens;
  eo.compression_interval = 0;
  eo.decode_scores = o.decode_scores != 0;
  eo.score_pool_kernel = o.score_pool_kernel;
  Engine engine(std::make_unique<BorrowedExecutor>(shared), std::move(kv), eo, &metrics);

  RunResult r;
  r.rate = rate;
  r.policy = std::string(CompressionPolicyName(policy));
  // Per request: the step of its last token (to tell decode tokens from prefill tokens).
  std::vector<int64_t> last_step(num_prompts, -2);
  int64_t step = 0;
  int32_t step_decode = 0, step_prefill = 0;
  double ratio_sum = 0;
  absl::Status first_error;
  const auto prompts = MakePrompts(o, shared->config().vocab_size, num_prompts, o.input_len);
  for (int32_t i = 0; i < num_prompts; ++i) {
    EngineRequest q;
    q.request_id = "p" + std::to_string(i);
    q.prompt = prompts[i];
    q.sampling.temperature = o.temperature;
    q.seed = o.seed * 1000003ull + static_cast<uint64_t>(i);
    q.max_tokens = output_len;
    q.ignore_eos = true;
    q.policy = policy;
    if (rate > 1) {
      q.compression.mode = BudgetMode::kRate;
      q.compression.compression_rate = rate;
    }
    q.compression.constraints.protected_window = o.protected_window;
    q.observation_window = o.observation_window;
    q.continual = false;  // after prefill and under memory pressure only (paper: interval 1e6)
    RETURN_IF_ERROR(Annotate(
        engine.Submit(std::move(q),
                      [&, i](EngineOutput out) {
                        if (!out.tokens.empty()) {
                          if (last_step[i] == step - 1) {
                            step_decode++;
                          } else {
                            step_prefill++;
                          }
                          last_step[i] = step;
                        }
                        if (out.finished) {
                          r.prompt_tokens += out.usage.prompt_tokens;
                          r.output_tokens += out.usage.completion_tokens;
                          ratio_sum += out.usage.compression_ratio;
                          if (out.status.ok() && out.reason == FinishReason::kLength &&
                              out.usage.completion_tokens == output_len) {
                            r.finished_ok++;
                          } else {
                            r.failed++;
                            if (first_error.ok()) {
                              first_error = out.status.ok()
                                                ? absl::InternalError(absl::StrCat(
                                                      "request p", i, " finished with ",
                                                      out.usage.completion_tokens, " tokens"))
                                                : out.status;
                            }
                          }
                        }
                      }),
        "submit"));
  }

  int64_t batch_sum = 0, batch_steps = 0;
  const auto start = Clock::now();
  auto last_progress = start;
  while (true) {
    if (Seconds(last_progress, Clock::now()) >= 10) {  // liveness for long runs (stderr)
      last_progress = Clock::now();
      std::cerr << absl::StrFormat(
          "  rate %g: %.0f s, step %d, %d/%d finished, %d running, %d waiting, %d preemptions\n",
          rate, Seconds(start, last_progress), step, r.finished_ok + r.failed, num_prompts,
          engine.num_running(), engine.num_waiting(),
          engine.kv_manager().Stats(false).preemptions_total);
    }
    step_decode = step_prefill = 0;
    const auto t0 = Clock::now();
    const bool busy = engine.StepForTest();
    const double dt = Seconds(t0, Clock::now());
    if (!busy) break;
    r.steps++;
    if (step_prefill > 0) {
      r.prefill_steps++;
      r.prefill_seconds += dt;
    } else if (step_decode > 0) {
      r.decode_steps++;
      r.decode_seconds += dt;
      r.decode_step_tokens += step_decode;
    }
    if (step_decode > 0) {
      batch_sum += step_decode;
      batch_steps++;
      r.max_decode_batch = std::max(r.max_decode_batch, step_decode);
    }
    step++;
  }
  r.wall_seconds = Seconds(start, Clock::now());
  r.total_tok_s = static_cast<double>(r.prompt_tokens + r.output_tokens) / r.wall_seconds;
  r.decode_tok_s = r.decode_seconds > 0 ? r.decode_step_tokens / r.decode_seconds : 0;
  r.mean_decode_batch = batch_steps ? static_cast<double>(batch_sum) / batch_steps : 0;
  const KvStats st = engine.kv_manager().Stats(false);
  r.preemptions = st.preemptions_total;
  r.compressions = st.compressions_by_trigger;
  for (const auto& [k, v] : st.compressions_by_trigger) r.compressions_total += v;
  r.evicted_kvs = st.evicted_kvs_total;
  const std::string text = metrics.Render();
  r.compression_seconds = MetricValue(text, "kvc_worker_compression_seconds_sum");
  r.compression_count =
      static_cast<int64_t>(MetricValue(text, "kvc_worker_compression_seconds_count"));
  const int32_t finished = r.finished_ok + r.failed;
  r.mean_final_ratio = finished ? ratio_sum / finished : 1;
  if (finished != num_prompts) {
    return absl::InternalError(
        absl::StrCat(num_prompts - finished, " requests never finished (engine went idle)"));
  }
  if (!first_error.ok()) {
    return Annotate(first_error, absl::StrCat(r.failed, " of ", num_prompts, " requests failed"));
  }
  return r;
}

nlohmann::json ToJson(const RunResult& r, const Options& o, const Setup& s) {
  nlohmann::json j;
  j["kind"] = "kvc-throughput";
  j["label"] = o.label;
  j["decode_scores"] = o.decode_scores != 0;
  j["score_pool_kernel"] = o.score_pool_kernel;
  j["backend"] = s.backend;
  j["device"] = s.device;
  j["model"] = s.model;
  j["prompt"] = o.prompt == "repeat" ? "one repeated token id" : "random token ids (seeded)";
  j["num_prompts"] = o.num_prompts;
  j["input_len"] = o.input_len;
  j["output_len"] = o.output_len;
  j["rate"] = r.rate;
  j["policy"] = r.policy;
  j["protected_window"] = o.protected_window;
  j["temperature"] = o.temperature;
  j["max_num_seqs"] = o.max_num_seqs;
  j["max_prefill_tokens"] = o.max_prefill_tokens;
  j["block_size"] = o.block_size;
  j["num_blocks"] = s.num_blocks;
  j["kv_pool_bytes"] = s.num_blocks * s.bytes_per_block;
  j["prompt_tokens"] = r.prompt_tokens;
  j["output_tokens"] = r.output_tokens;
  j["total_tokens"] = r.prompt_tokens + r.output_tokens;
  j["wall_seconds"] = r.wall_seconds;
  j["total_tok_s"] = r.total_tok_s;
  j["decode_tok_s"] = r.decode_tok_s;
  j["speedup_vs_rate1"] = r.speedup;
  j["steps"] = r.steps;
  j["prefill_steps"] = r.prefill_steps;
  j["prefill_seconds"] = r.prefill_seconds;
  j["decode_steps"] = r.decode_steps;
  j["decode_seconds"] = r.decode_seconds;
  j["mean_decode_batch"] = r.mean_decode_batch;
  j["max_decode_batch"] = r.max_decode_batch;
  j["preemptions"] = r.preemptions;
  j["compressions"] = r.compressions_total;
  j["compressions_by_trigger"] = r.compressions;
  j["evicted_kvs"] = r.evicted_kvs;
  j["compression_seconds"] = r.compression_seconds;
  j["compression_count"] = r.compression_count;
  j["mean_final_compression_ratio"] = r.mean_final_ratio;
  j["executor_create_seconds"] = s.create_seconds;
  return j;
}

// Re-plots every kvc-throughput line of `json_path` (or `runs` when there is no file): total
// throughput (left) and max decode batch (right) against compression rate, one line per
// (input, output) length (and model, when the file holds several).
absl::Status WritePlot(const std::string& png, const std::string& json_path,
                       const std::vector<nlohmann::json>& runs) {
  std::vector<nlohmann::json> all;
  if (!json_path.empty()) {
    std::ifstream in(json_path);
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      n++;
      if (line.empty()) continue;
      try {
        nlohmann::json j = nlohmann::json::parse(line);
        if (j.value("kind", "") == "kvc-throughput" && !j.contains("error")) {
          all.push_back(std::move(j));
        }
      } catch (const nlohmann::json::exception& e) {
        return absl::InvalidArgumentError(
            absl::StrCat(json_path, ":", n, ": not a JSON line (", e.what(), ")"));
      }
    }
  }
  if (json_path.empty()) {
    for (const auto& j : runs) {
      if (!j.contains("error")) all.push_back(j);
    }
  }
  if (all.empty()) return absl::OkStatus();
  std::set<std::string> models;
  std::set<double> rates;
  for (const auto& j : all) {
    models.insert(j.value("model", "") + " " + j.value("backend", ""));
    rates.insert(j.value("rate", 1.0));
  }
  // Series key -> rate -> (tok/s, max batch); later lines replace earlier ones.
  std::map<std::string, std::map<double, std::pair<double, double>>> series;
  double peak = 0;
  for (const auto& j : all) peak = std::max(peak, j.value("total_tok_s", 0.0));
  const double scale = peak >= 10000 ? 1000 : 1;  // thousands keep the tick labels short
  for (const auto& j : all) {
    std::string key =
        absl::StrCat("in ", j.value("input_len", 0), " out ", j.value("output_len", 0));
    if (models.size() > 1) key = j.value("backend", "") + " " + key;
    if (j.value("label", "") != "") key += " " + j.value("label", "");
    series[key][j.value("rate", 1.0)] = {j.value("total_tok_s", 0.0) / scale,
                                         static_cast<double>(j.value("max_decode_batch", 0))};
  }
  eval::LinePlot tp, bp;
  tp.x.assign(rates.begin(), rates.end());
  bp.x = tp.x;
  tp.title = "kvc throughput vs compression rate";
  tp.x_label = "compression rate";
  tp.y_label = scale > 1 ? "total k tok/s" : "total tok/s";
  bp.title = "max decode batch vs compression rate";
  bp.x_label = "compression rate";
  bp.y_label = "max decode batch";
  double tmax = 0, bmax = 0;
  int32_t color = 0;
  for (const auto& [key, by_rate] : series) {
    eval::PlotSeries ts, bs;
    ts.name = bs.name = key;
    ts.color = bs.color = eval::PaletteColor(color++);
    for (double x : tp.x) {
      auto it = by_rate.find(x);
      ts.y.push_back(it == by_rate.end() ? NAN : it->second.first);
      bs.y.push_back(it == by_rate.end() ? NAN : it->second.second);
      if (it != by_rate.end()) {
        tmax = std::max(tmax, it->second.first);
        bmax = std::max(bmax, it->second.second);
      }
    }
    tp.series.push_back(std::move(ts));
    bp.series.push_back(std::move(bs));
  }
  tp.y_max = tmax > 0 ? tmax * 1.1 : 1;
  bp.y_max = bmax > 0 ? bmax * 1.1 : 1;
  tp.log2_x = bp.log2_x = true;
  ASSIGN_OR_RETURN(eval::Canvas left, eval::RenderLinePlot(tp, 720, 480));
  ASSIGN_OR_RETURN(eval::Canvas right, eval::RenderLinePlot(bp, 720, 480));
  eval::Canvas both(1440, 480);
  for (int32_t y = 0; y < 480; ++y) {
    for (int32_t x = 0; x < 720; ++x) {
      both.Set(x, y, left.At(x, y));
      both.Set(720 + x, y, right.At(x, y));
    }
  }
  return Annotate(eval::WritePng(png, both), "--plot");
}

std::string Table(const std::vector<RunResult>& results) {
  std::string t = absl::StrFormat(
      "| rate | policy | total tok/s | decode tok/s | speed-up | mean batch | max batch | "
      "preempt | compressions (prefill/pressure) | compress s | prefill s | wall s | ratio |\n"
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const RunResult& r : results) {
    auto trig = [&](const char* k) {
      auto it = r.compressions.find(k);
      return it == r.compressions.end() ? int64_t{0} : it->second;
    };
    absl::StrAppendFormat(&t,
                          "| %g | %s | %.1f | %.1f | %s | %.1f | %d | %d | %d (%d/%d) | %.3f | "
                          "%.2f | %.2f | %.2f |\n",
                          r.rate, r.policy, r.total_tok_s, r.decode_tok_s,
                          r.speedup > 0 ? absl::StrFormat("%.2fx", r.speedup) : "-",
                          r.mean_decode_batch, r.max_decode_batch, r.preemptions,
                          r.compressions_total, trig("prefill"), trig("memory_pressure"),
                          r.compression_seconds, r.prefill_seconds, r.wall_seconds,
                          r.mean_final_ratio);
  }
  return t;
}

absl::Status Run(const Options& o) {
  ASSIGN_OR_RETURN(Setup s, BuildExecutor(o));
  const KvLayout& layout = s.executor->layout();
  const int64_t pool_tokens =
      s.num_blocks * o.block_size / (int64_t{layout.num_layers} * layout.num_kv_heads);
  std::cout << absl::StrFormat(
      "kvc throughput benchmark (in-process engine, StepForTest, no gRPC)\n"
      "backend %s on %s\nmodel: %s\nexecutor created in %.2f s (reused by every run)\n"
      "%d prompts x (%d prompt + %d output) tokens, %s, ignore_eos, temperature %g, all "
      "submitted at once\n"
      "KV pool: %d blocks of %d = %.2f GiB = %d tokens uncompressed (%.1f full requests); "
      "max_num_seqs %d, max_prefill_tokens %d\n"
      "compression: rate 1 = off (policy none); rates > 1: policy %s, rate budget, protected "
      "window %d, observation window %d, after prefill and under memory pressure only\n\n",
      s.backend, s.device, s.model, s.create_seconds, o.num_prompts, o.input_len, o.output_len,
      o.prompt == "repeat" ? "one repeated token id" : "random token ids (seeded)", o.temperature,
      s.num_blocks, o.block_size,
      static_cast<double>(s.num_blocks * s.bytes_per_block) / (1ll << 30), pool_tokens,
      static_cast<double>(pool_tokens) / (o.input_len + o.output_len), o.max_num_seqs,
      o.max_prefill_tokens, o.policy, o.protected_window, o.observation_window);
  if (o.warmup) {
    const int32_t n = std::min(o.num_prompts, 8);
    const auto t0 = Clock::now();
    auto w = RunOnce(s.executor.get(), o, 1, n, std::min(o.output_len, 4));
    RETURN_IF_ERROR(Annotate(w.status(), "warm-up run"));
    std::cout << absl::StrFormat(
        "warm-up: %d prompts, %d output tokens, compression off: %.2f s "
        "(not reported)\n\n",
        n, std::min(o.output_len, 4), Seconds(t0, Clock::now()));
  }
  // The rate-1 (compression off) run goes first: it is the baseline of the speed-ups.
  std::vector<double> rates = o.rates;
  std::stable_partition(rates.begin(), rates.end(), [](double r) { return r == 1; });
  std::ofstream json;
  if (!o.json.empty()) {
    json.open(o.json, std::ios::app);
    if (!json) return absl::InvalidArgumentError("--json: cannot open " + o.json);
  }
  std::vector<RunResult> results;
  std::vector<nlohmann::json> lines;
  absl::Status failed;
  double base = 0;
  for (double rate : rates) {
    absl::StatusOr<RunResult> r = RunOnce(s.executor.get(), o, rate, o.num_prompts, o.output_len);
    nlohmann::json line;
    if (!r.ok()) {
      std::cout << absl::StrFormat("rate %g: FAILED: %s\n", rate, r.status().ToString());
      if (failed.ok()) failed = Annotate(r.status(), absl::StrCat("rate ", rate));
      RunResult empty;
      empty.rate = rate;
      line = ToJson(empty, o, s);
      line["error"] = r.status().ToString();
    } else {
      if (rate == 1 && base == 0) base = r->total_tok_s;
      r->speedup = base > 0 ? r->total_tok_s / base : 0;
      std::cout << absl::StrFormat(
          "rate %g: %d requests, %d prompt + %d output tokens in %.2f s = %.1f tok/s total, "
          "%.1f tok/s decode, decode batch mean %.1f max %d, %d preemptions, %d compressions "
          "(%.3f s), speed-up %s\n",
          r->rate, r->finished_ok, r->prompt_tokens, r->output_tokens, r->wall_seconds,
          r->total_tok_s, r->decode_tok_s, r->mean_decode_batch, r->max_decode_batch,
          r->preemptions, r->compressions_total, r->compression_seconds,
          r->speedup > 0 ? absl::StrFormat("%.2fx", r->speedup) : "-");
      line = ToJson(*r, o, s);
      results.push_back(*std::move(r));
    }
    if (json.is_open()) {
      json << line.dump() << std::endl;
      if (!json) return absl::InternalError("--json: write to " + o.json + " failed");
    }
    lines.push_back(std::move(line));
  }
  json.close();
  if (!o.plot.empty()) RETURN_IF_ERROR(WritePlot(o.plot, o.json, lines));

  std::cout << absl::StrFormat(
      "\n### kvc throughput: %s, %s, in %d / out %d, %d prompts, KV pool %.2f GiB\n\n", s.backend,
      s.device, o.input_len, o.output_len, o.num_prompts,
      static_cast<double>(s.num_blocks * s.bytes_per_block) / (1ll << 30));
  std::cout << Table(results);
  std::cout
      << "\ntotal tok/s = (prompt + output tokens) / wall time of the run (all requests "
         "submitted at once, engine stepped until idle).\n"
         "decode tok/s = tokens generated in decode-only steps / wall time of those steps "
         "(steps that prefill anything are excluded).\n"
         "mean/max batch = sequences decoding in one step (steps with any decode; prefill "
         "sequences not counted).\n"
         "compress s = sum of kvc_worker_compression_seconds (selection, metadata, compaction "
         "moves); score collection runs inside the forward pass and is not separated.\n"
         "prefill s = wall time of steps that prefill anything (they may also decode).\n"
         "speed-up = total tok/s over that of the rate-1 (compression off) run of this "
         "invocation.\nratio = mean final compression ratio (uncompressed / held KVs) of the "
         "requests.\n";
  return failed;
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  auto o = kvc::ParseArgs(argc, argv);
  if (!o.ok()) {
    std::cerr << "kvc-bench-throughput: " << o.status().message() << "\n" << kvc::kUsage;
    return 2;
  }
  absl::Status st = kvc::Run(*o);
  if (!st.ok()) {
    std::cerr << "kvc-bench-throughput: " << st << "\n";
    return 1;
  }
  return 0;
}
