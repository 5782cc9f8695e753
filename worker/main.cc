// kvc-worker: one model replica on one device. Serves kvc.v1.Worker (token ids in, streamed token
// ids out) and kvc.v1.KvManager (capacity and statistics) on one gRPC port, grpc.health.v1, and
// Prometheus metrics on --metrics_port.

#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_server.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/process.h"
#include "common/status_macros.h"
#include "kernels/include/kvc/kernels/device_info.h"
#include "kvmanager/kvmanager_service.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#if defined(KVC_HAS_CUDA_EXECUTOR)
#include "worker/cuda_executor.h"
#endif
#include "worker/engine.h"
#include "worker/tp_cpu_executor.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, model_dir, "models/kvc-ref",
          "Model directory in Hugging Face layout (config.json, *.safetensors).");
ABSL_FLAG(bool, random_weights, false,
          "Build the model from config.json alone with random weights (benchmarks).");
ABSL_FLAG(std::string, served_model_name, "",
          "Model name reported to clients (default: dir name).");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to bind (0.0.0.0 in containers).");
ABSL_FLAG(int, port, 50061, "gRPC port (0 = pick a free one; see --ready_file).");
ABSL_FLAG(int, metrics_port, 9461, "Prometheus /metrics port (0 = pick a free one, -1 = off).");
ABSL_FLAG(std::string, backend, "auto", "Executor backend: auto, cpu or cuda.");
ABSL_FLAG(int64_t, num_blocks, 0, "KV blocks in the pool (0 = derive from --kv_cache_memory).");
ABSL_FLAG(int64_t, kv_cache_memory, 256ll << 20, "Bytes for the KV pool when --num_blocks is 0.");
ABSL_FLAG(int32_t, tensor_parallel, 1,
          "Ranks of the tensor-parallel group; must divide num_key_value_heads. CPU backend: "
          "one thread per rank, each with its own weight shard and KV pool (--kv_cache_memory "
          "covers all of them).");
ABSL_FLAG(int, block_size, 16, "KVs per block (one (sequence, layer, kv_head) per block).");
ABSL_FLAG(int, max_num_seqs, 64, "Maximum running sequences.");
ABSL_FLAG(int, max_prefill_tokens, 4096, "Prompt tokens prefilled per engine step.");
ABSL_FLAG(float, default_temperature, 1.0f, "Temperature when a request sets none.");
ABSL_FLAG(int, default_max_tokens, 256, "max_tokens when a request sets none.");
ABSL_FLAG(std::string, compression_policy, "kvcompress",
          "Default policy: kvcompress, snapkv, pyramidkv, streaming, random or none.");
ABSL_FLAG(double, compression_rate, 0,
          "Default budget as a rate (uncompressed/kept KVs, >= 1); 0 = no default budget.");
ABSL_FLAG(int32_t, max_cache_tokens, 0,
          "Default budget as average KVs per (layer, kv_head); 0 = none. Exclusive with "
          "--compression_rate.");
ABSL_FLAG(int32_t, protected_window, 32, "Default P: the last P tokens are never evicted.");
ABSL_FLAG(int32_t, sink_tokens, 0, "Default S: the first S tokens are never evicted.");
ABSL_FLAG(int32_t, min_kvs_per_head, 0, "Default minimum KVs any head keeps.");
ABSL_FLAG(int32_t, observation_window, 32, "Default w: prompt queries that score prompt KVs.");
ABSL_FLAG(bool, continual_compression, true,
          "Default: re-compress a decoding sequence whenever it grows over its budget.");
ABSL_FLAG(int32_t, pressure_headroom_tokens, 32,
          "Under memory pressure, compress an over-budget sequence below its budget by the "
          "growth of this many decode steps (hysteresis against recompressing every step).");
ABSL_FLAG(int32_t, compression_interval, 0,
          "Also compress over-budget sequences every N engine steps (0 = off).");
ABSL_FLAG(bool, decode_scores, true, "Decode queries add their squared attention to scores.");
ABSL_FLAG(int32_t, score_pool_kernel, 7, "Max-pool kernel of prefill scores (0 or 1 = off).");
ABSL_FLAG(int32_t, pyramid_beta, 20, "PyramidKV: the top layer keeps 1/beta of the average.");
ABSL_FLAG(bool, per_head_metrics, false, "Export kvc_kv_head_kvs{layer,head} (L*H series).");
ABSL_FLAG(bool, check_invariants, false, "Check KV-manager invariants after every step (debug).");
ABSL_FLAG(std::string, ready_file, "", "Write the bound ports here as JSON once serving.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");

namespace kvc {
namespace {

absl::Status Run() {
  auto level = ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  RETURN_IF_ERROR(level.status());
  SetMinLogLevel(*level);

  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  std::shared_ptr<const ModelWeights> weights;
  if (absl::GetFlag(FLAGS_random_weights)) {
    ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfig::FromJsonFile(model_dir + "/config.json"));
    ASSIGN_OR_RETURN(auto w, ModelWeights::Random(cfg, /*seed=*/1234));
    weights = std::make_shared<const ModelWeights>(std::move(w));
  } else {
    ASSIGN_OR_RETURN(weights, LoadModel(model_dir));
  }
  const ModelConfig& cfg = weights->config;
  std::string name = absl::GetFlag(FLAGS_served_model_name);
  if (name.empty()) name = cfg.name;

  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    return absl::InvalidArgumentError("--backend must be auto, cpu or cuda, got " + backend);
  }
#if defined(KVC_HAS_CUDA_EXECUTOR)
  const bool want_cuda = backend == "cuda" || (backend == "auto" && kernels::CudaDeviceCount() > 0);
#else
  if (backend == "cuda") {
    return absl::UnimplementedError(
        "--backend=cuda: this kvc-worker was built without CUDA (KVC_ENABLE_CUDA=OFF); use "
        "--backend=cpu");
  }
  const bool want_cuda = false;
#endif

  const int32_t block_size = absl::GetFlag(FLAGS_block_size);
  if (block_size < 1 || block_size > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--block_size must be in [1, 256], got ", block_size));
  }
  const int32_t tensor_parallel = absl::GetFlag(FLAGS_tensor_parallel);
  if (tensor_parallel < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tensor_parallel must be >= 1, got ", tensor_parallel));
  }
  if (want_cuda && tensor_parallel > 1) {
    if (backend == "cuda") {
      return absl::UnimplementedError(
          "--backend=cuda serves --tensor_parallel 1 only (multi-GPU is not built yet)");
    }
    KVC_LOG(WARNING) << "--tensor_parallel " << tensor_parallel
                     << " runs on the CPU backend (the CUDA executor is single-GPU)";
  }
  const bool use_cuda = want_cuda && tensor_parallel == 1;
  // Blocks in the pool: --num_blocks, or --kv_cache_memory over the backend's bytes per block
  // (CPU: K + V fp32, score fp32, position int32, one pool per rank; CUDA: bf16 K + V rows of
  // the kernels' head dim 64 or 128, score, position).
  auto pool_blocks = [&](bool cuda) -> int64_t {
    const int64_t n = absl::GetFlag(FLAGS_num_blocks);
    if (n > 0) return n;
    int64_t bytes_per_block =
        TensorParallelCpuExecutor::KvBytesPerBlock(cfg, block_size, tensor_parallel);
#if defined(KVC_HAS_CUDA_EXECUTOR)
    if (cuda) bytes_per_block = CudaExecutor::BytesPerBlock(cfg, block_size);
#endif
    return absl::GetFlag(FLAGS_kv_cache_memory) / bytes_per_block;
  };
  int64_t num_blocks = pool_blocks(use_cuda);
  if (num_blocks < 1) return absl::InvalidArgumentError("the KV pool would have no blocks");

  std::unique_ptr<Executor> executor;
#if defined(KVC_HAS_CUDA_EXECUTOR)
  if (use_cuda) {
    auto cuda = CudaExecutor::Create(weights, num_blocks, block_size);
    if (cuda.ok()) {
      executor = std::move(*cuda);
    } else if (backend == "cuda") {
      return Annotate(cuda.status(), "--backend=cuda");
    } else {
      KVC_LOG(WARNING) << "a CUDA device is present but the CUDA executor cannot serve this "
                          "model ("
                       << cuda.status() << "); serving on the CPU backend";
      num_blocks = pool_blocks(false);
      if (num_blocks < 1) return absl::InvalidArgumentError("the KV pool would have no blocks");
    }
  }
#else
  (void)use_cuda;
#endif
  if (executor == nullptr && tensor_parallel == 1) {
    ASSIGN_OR_RETURN(executor, CpuExecutor::Create(weights, num_blocks, block_size));
  } else if (executor == nullptr) {
    // INVALID_ARGUMENT naming num_key_value_heads when tensor_parallel does not divide it.
    ASSIGN_OR_RETURN(executor, TensorParallelCpuExecutor::Create(weights, num_blocks, block_size,
                                                                 tensor_parallel));
  }
  KvManagerOptions kv_options;
  kv_options.layout = executor->layout();
  ASSIGN_OR_RETURN(auto kv, KvManager::Create(kv_options));

  MetricsRegistry metrics;
  const KvManager* kv_ptr = kv.get();
  EngineOptions eopts;
  eopts.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  eopts.max_prefill_tokens = absl::GetFlag(FLAGS_max_prefill_tokens);
  eopts.check_invariants = absl::GetFlag(FLAGS_check_invariants);
  if (eopts.max_num_seqs < 1) return absl::InvalidArgumentError("--max_num_seqs must be >= 1");
  if (eopts.max_prefill_tokens < 1) {
    return absl::InvalidArgumentError("--max_prefill_tokens must be >= 1");
  }
  eopts.decode_scores = absl::GetFlag(FLAGS_decode_scores);
  eopts.score_pool_kernel = absl::GetFlag(FLAGS_score_pool_kernel);
  eopts.compression_interval = absl::GetFlag(FLAGS_compression_interval);
  eopts.pressure_headroom_tokens = absl::GetFlag(FLAGS_pressure_headroom_tokens);
  if (eopts.pressure_headroom_tokens < 0) {
    return absl::InvalidArgumentError("--pressure_headroom_tokens must be >= 0");
  }
  eopts.policy_options.pyramid_beta = absl::GetFlag(FLAGS_pyramid_beta);
  RETURN_IF_ERROR(Annotate(eopts.policy_options.Validate(), "--pyramid_beta"));
  if (eopts.compression_interval < 0) {
    return absl::InvalidArgumentError("--compression_interval must be >= 0");
  }
  if (eopts.score_pool_kernel < 0 ||
      (eopts.score_pool_kernel > 1 && eopts.score_pool_kernel % 2 == 0)) {
    return absl::InvalidArgumentError("--score_pool_kernel must be 0, 1 or odd");
  }
  CompressionDefaults cdef;
  {
    auto policy = ParseCompressionPolicy(absl::GetFlag(FLAGS_compression_policy));
    RETURN_IF_ERROR(Annotate(policy.status(), "--compression_policy"));
    cdef.policy = *policy;
    const double rate = absl::GetFlag(FLAGS_compression_rate);
    const int32_t mct = absl::GetFlag(FLAGS_max_cache_tokens);
    if (rate > 0 && mct > 0) {
      return absl::InvalidArgumentError(
          "--compression_rate and --max_cache_tokens are exclusive; set one");
    }
    if (rate > 0) {
      cdef.settings.mode = BudgetMode::kRate;
      cdef.settings.compression_rate = rate;
    } else if (mct > 0) {
      cdef.settings.mode = BudgetMode::kMaxCacheTokens;
      cdef.settings.max_cache_tokens = mct;
    }
    cdef.settings.constraints.protected_window = absl::GetFlag(FLAGS_protected_window);
    cdef.settings.constraints.sink_tokens = absl::GetFlag(FLAGS_sink_tokens);
    cdef.settings.constraints.min_kvs_per_head = absl::GetFlag(FLAGS_min_kvs_per_head);
    RETURN_IF_ERROR(Annotate(cdef.settings.Validate(kv_options.layout), "compression flags"));
    cdef.observation_window = absl::GetFlag(FLAGS_observation_window);
    if (cdef.observation_window < 1) {
      return absl::InvalidArgumentError("--observation_window must be >= 1");
    }
    cdef.continual = absl::GetFlag(FLAGS_continual_compression);
  }
  Engine engine(std::move(executor), std::move(kv), eopts, &metrics);
  ExportKvMetrics(kv_ptr, &metrics, absl::GetFlag(FLAGS_per_head_metrics));
  auto& up =
      metrics.AddGauge("kvc_worker_info", "Worker identity (value 1).", {"model", "backend"});
  up.WithLabels({name, engine.executor().backend()}).Set(1);

  SamplingDefaults defaults;
  defaults.temperature = absl::GetFlag(FLAGS_default_temperature);
  defaults.max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  WorkerService worker_service(&engine, name, defaults, cdef);
  KvManagerService kv_service(kv_ptr, [&engine] {
    return QueueDepth{engine.num_running(), engine.num_waiting()};
  });

  ServerOptions so;
  so.host = absl::GetFlag(FLAGS_host);
  so.port = absl::GetFlag(FLAGS_port);
  so.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  so.ready_file = absl::GetFlag(FLAGS_ready_file);
  return ServeUntilSignal(
      so, {&worker_service, &kv_service}, &metrics,
      [&](int port) {
        engine.Start();
        KVC_LOG(INFO) << "kvc-worker serving " << name << " (" << cfg.architecture << ", "
                      << engine.executor().backend() << ", tensor_parallel " << tensor_parallel
                      << ", " << num_blocks << " blocks of " << block_size << ") on " << so.host
                      << ":" << port;
      },
      [&] { engine.Stop(); });
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  kvc::BlockShutdownSignals();
  absl::SetProgramUsageMessage("kvc-worker --model_dir DIR [--port N] [--metrics_port N]");
  absl::ParseCommandLine(argc, argv);
  absl::Status st = kvc::Run();
  if (!st.ok()) {
    KVC_LOG(ERROR) << "kvc-worker: " << st;
    return 1;
  }
  return 0;
}
