// kvc-bench-step: whole-model step benchmarks of the CUDA executor over random bf16 weights of a
// Llama-family architecture (default Llama-3.1-8B): compression-off decode step time against the
// memory-bandwidth floor, prefill throughput and model FLOPs utilisation, the overheads of
// KV-Compress (score collection, selection, compaction) and the per-KV metadata overhead
// (kvc issue 5, runs 2, 3, 5, 6; issue 4's overhead shares). docs/benchmarks.md keeps the figures.
//
//   kvc-bench-step [--config FILE] [--mode decode|prefill|overhead|metadata|gemm|all] [--iters N]
//                  [--batches 1,8,32,128,256] [--contexts 1024,8192,32768]
//                  [--prefill 1x32768,16x2048] [--prefill-chunk N]
//                  [--overhead-context 6000] [--overhead-batches 32,128] [--rate 8]
//                  [--window 32] [--protected-window 32] [--gen-tokens 512]
//                  [--block-size 16] [--reserve-gib 6] [--seed S] [--cuda-graphs 0|1]
//                  [--evict-path host|device|both] [--json FILE]
//
// Conventions (every rate is measured in the same process, on the device the output names):
//  * Copy bandwidth: cudaMemcpy device-to-device of 1 GiB, counted as bytes read + written
//    (2 x size / time), NVIDIA bandwidthTest's convention; median of the runs.
//  * bf16 GEMM rate: cuBLASLt 8192 x 8192 x 8192, bf16 in and out, fp32 accumulate, A transposed
//    like the executor's weights; 2mnk / time, median.
//  * Step time: wall clock around Executor::Forward(), which returns after the device finished
//    and the logits (or, where the executor samples, the tokens) reached the host; warm-up, then
//    the median of --iters. Host work inside Forward (batch validation, block-table mirror
//    update, logits download where the executor does not sample) is part of the step; two
//    columns replay the parts that grow with the batch (ValidateForwardBatch, which walks every
//    block id, and the logits download) in the same run so that the device share can be told
//    apart. Decode-only steps replay CUDA graphs unless --cuda-graphs 0; the "path" column says
//    what the timed steps did (executor stats).
//  * Every sequence gets a fresh seq_id and is forgotten (Executor::ForgetSequence) after its
//    point, so each point starts with an empty block-table mirror like a new batch would.
//  * Decode floor = (weight bytes read + KV bytes read) / copy bandwidth. Weight bytes: every
//    bf16 matrix and norm of the layers, the final norm and the LM head (the embedding table is
//    only gathered, one row per sequence, and is not counted unless tied to the LM head). KV
//    bytes: 2 (K and V) * L * H_kv * context * head_dim * 2 B per sequence.
//  * Prefill MFU = model FLOPs / time / GEMM rate; model FLOPs = 2 * (matmul parameters of the
//    layers) * tokens + 2 * vocab * hidden per logits row + causal attention
//    4 * L * H_q * head_dim * sum(n^2) / 2.
//  * Decode sequences are built by hand: every (layer, kv_head) holds `context` KVs (the new
//    token's included) in blocks handed out in a shuffled order; the K/V pool holds zeros (the
//    executor zeroes it at creation), so nothing reads NaN or inf and the work is that of real
//    values. The compression measurements use a KvManager and real prefill scores.
//
// Output: markdown tables on stdout (device named) and, with --json, one JSON object per row.
// Exit status 0 on success, 2 on bad options, 1 on a device or executor error.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/compression_policy.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_manager.h"
#include "model/config.h"
#include "nlohmann/json.hpp"
#include "worker/cuda_executor.h"
#include "worker/executor.h"

namespace kvc {
namespace {

#define STEP_CUDA(expr)                                                                     \
  do {                                                                                      \
    const cudaError_t step_err_ = (expr);                                                   \
    if (step_err_ != cudaSuccess) {                                                         \
      cudaGetLastError();                                                                   \
      return absl::InternalError(absl::StrCat(#expr, ": ", cudaGetErrorString(step_err_))); \
    }                                                                                       \
  } while (0)

#define STEP_CUBLAS(expr)                                                         \
  do {                                                                            \
    const cublasStatus_t step_st_ = (expr);                                       \
    if (step_st_ != CUBLAS_STATUS_SUCCESS) {                                      \
      return absl::InternalError(                                                 \
          absl::StrCat(#expr, ": cuBLASLt status ", static_cast<int>(step_st_))); \
    }                                                                             \
  } while (0)

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------
// Options

struct PrefillCase {
  int32_t seqs = 1;
  int32_t tokens = 0;
};

struct Options {
  std::string config;
  std::string mode = "all";
  std::vector<int32_t> batches = {1, 8, 32, 128, 256};
  std::vector<int32_t> contexts = {1024, 8192, 32768};
  std::vector<PrefillCase> prefill = {{1, 32768}, {16, 2048}};
  int32_t prefill_chunk = 0;  // 0 = the whole prompt in one Forward
  int32_t iters = 10;
  int32_t overhead_context = 6000;
  std::vector<int32_t> overhead_batches = {32, 128};
  double rate = 8.0;
  int32_t window = 32;
  int32_t pool_kernel = 7;
  int32_t protected_window = 32;
  int32_t gen_tokens = 512;
  int32_t block_size = 16;
  double reserve_gib = 6.0;
  uint64_t seed = 1;
  int32_t cuda_graphs = 1;          // decode-only steps replay CUDA graphs (the executor's default)
  std::string evict_path = "both";  // host, device (where evicts_on_device()), both
  std::string json;

  bool Runs(const char* m) const { return mode == "all" || mode == m; }
};

constexpr char kUsage[] =
    "usage: kvc-bench-step [--config FILE] [--mode decode|prefill|overhead|metadata|gemm|all]\n"
    "  [--iters N] [--batches 1,8,32,128,256] [--contexts 1024,8192,32768]\n"
    "  [--prefill 1x32768,16x2048] [--prefill-chunk N] [--overhead-context 6000]\n"
    "  [--overhead-batches 32,128] [--rate 8] [--window 32] [--pool-kernel 7]\n"
    "  [--protected-window 32] [--gen-tokens 512] [--block-size 16] [--reserve-gib 6]\n"
    "  [--seed S] [--cuda-graphs 0|1] [--evict-path host|device|both] [--json FILE]\n";

absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& flag, const std::string& s,
                                                  int32_t min_value) {
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < min_value) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": '", std::string(part), "' is not an integer >= ", min_value));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty list"));
  return out;
}

absl::StatusOr<int32_t> ParseInt(const std::string& flag, const std::string& s, int32_t min_value) {
  ASSIGN_OR_RETURN(std::vector<int32_t> v, ParseIntList(flag, s, min_value));
  if (v.size() != 1) return absl::InvalidArgumentError(absl::StrCat(flag, ": one value expected"));
  return v[0];
}

absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& s,
                                   double min_value) {
  double v = 0;
  if (!absl::SimpleAtod(s, &v) || !std::isfinite(v) || v < min_value) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", s, "' is not a number >= ", min_value));
  }
  return v;
}

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  Options o;
  o.config = "bench/throughput/configs/llama-3.1-8b.json";
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") return absl::CancelledError("help");
    if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(flag, ": missing value"));
    const std::string v = argv[++i];
    if (flag == "--config") {
      o.config = v;
    } else if (flag == "--mode") {
      if (v != "decode" && v != "prefill" && v != "overhead" && v != "metadata" && v != "gemm" &&
          v != "all") {
        return absl::InvalidArgumentError(absl::StrCat(
            "--mode: '", v, "' is not one of decode, prefill, overhead, metadata, gemm, all"));
      }
      o.mode = v;
    } else if (flag == "--batches") {
      ASSIGN_OR_RETURN(o.batches, ParseIntList(flag, v, 1));
    } else if (flag == "--contexts") {
      ASSIGN_OR_RETURN(o.contexts, ParseIntList(flag, v, 1));
    } else if (flag == "--prefill") {
      o.prefill.clear();
      for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        const std::vector<std::string> xy = absl::StrSplit(part, 'x');
        PrefillCase c;
        if (xy.size() != 2 || !absl::SimpleAtoi(xy[0], &c.seqs) ||
            !absl::SimpleAtoi(xy[1], &c.tokens) || c.seqs < 1 || c.tokens < 1) {
          return absl::InvalidArgumentError(absl::StrCat("--prefill: '", std::string(part),
                                                         "' is not SEQSxTOKENS (e.g. 16x2048)"));
        }
        o.prefill.push_back(c);
      }
      if (o.prefill.empty()) return absl::InvalidArgumentError("--prefill: empty list");
    } else if (flag == "--prefill-chunk") {
      ASSIGN_OR_RETURN(o.prefill_chunk, ParseInt(flag, v, 0));
    } else if (flag == "--iters") {
      ASSIGN_OR_RETURN(o.iters, ParseInt(flag, v, 1));
    } else if (flag == "--overhead-context") {
      ASSIGN_OR_RETURN(o.overhead_context, ParseInt(flag, v, 2));
    } else if (flag == "--overhead-batches") {
      ASSIGN_OR_RETURN(o.overhead_batches, ParseIntList(flag, v, 1));
    } else if (flag == "--rate") {
      ASSIGN_OR_RETURN(o.rate, ParseDouble(flag, v, 1.0));
    } else if (flag == "--window") {
      ASSIGN_OR_RETURN(o.window, ParseInt(flag, v, 1));
    } else if (flag == "--pool-kernel") {
      ASSIGN_OR_RETURN(o.pool_kernel, ParseInt(flag, v, 0));
    } else if (flag == "--protected-window") {
      ASSIGN_OR_RETURN(o.protected_window, ParseInt(flag, v, 0));
    } else if (flag == "--gen-tokens") {
      ASSIGN_OR_RETURN(o.gen_tokens, ParseInt(flag, v, 1));
    } else if (flag == "--block-size") {
      ASSIGN_OR_RETURN(o.block_size, ParseInt(flag, v, 1));
    } else if (flag == "--reserve-gib") {
      ASSIGN_OR_RETURN(o.reserve_gib, ParseDouble(flag, v, 0.5));
    } else if (flag == "--seed") {
      ASSIGN_OR_RETURN(int32_t s, ParseInt(flag, v, 0));
      o.seed = static_cast<uint64_t>(s);
    } else if (flag == "--cuda-graphs") {
      ASSIGN_OR_RETURN(o.cuda_graphs, ParseInt(flag, v, 0));
      if (o.cuda_graphs > 1) return absl::InvalidArgumentError("--cuda-graphs: 0 or 1");
    } else if (flag == "--evict-path") {
      if (v != "host" && v != "device" && v != "both") {
        return absl::InvalidArgumentError(
            absl::StrCat("--evict-path: '", v, "' is not one of host, device, both"));
      }
      o.evict_path = v;
    } else if (flag == "--json") {
      o.json = v;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", flag));
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Model arithmetic (from the config alone)

struct ModelBytes {
  int64_t layer_matmul_params = 0;  // q/k/v, o, gate/up, down of ALL layers
  int64_t total_bytes = 0;          // every weight the executor holds (bf16)
  int64_t decode_read_bytes = 0;    // what one decode step reads (embedding table excluded)
  int64_t kv_bytes_per_token = 0;   // K + V of one token over all layers and kv heads
};

ModelBytes ComputeModelBytes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, d = c.head_dim, im = c.intermediate_size;
  const int64_t qkv = (static_cast<int64_t>(c.num_attention_heads) + 2 * c.num_key_value_heads) * d;
  const int64_t per_layer =
      h * qkv + static_cast<int64_t>(c.num_attention_heads) * d * h + 3 * h * im;
  ModelBytes m;
  m.layer_matmul_params = per_layer * c.num_hidden_layers;
  const int64_t norms = (2 * h) * c.num_hidden_layers + h;
  const int64_t embed = static_cast<int64_t>(c.vocab_size) * h;
  const int64_t head = c.tie_word_embeddings ? 0 : embed;
  m.total_bytes = 2 * (m.layer_matmul_params + norms + embed + head);
  m.decode_read_bytes = 2 * (m.layer_matmul_params + norms + embed);  // LM head = embed size
  m.kv_bytes_per_token =
      2 * static_cast<int64_t>(c.num_hidden_layers) * c.num_key_value_heads * d * 2;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Output

class Report {
 public:
  explicit Report(const std::string& json_path) {
    if (!json_path.empty()) {
      f_ = std::fopen(json_path.c_str(), "w");
      if (f_ == nullptr) std::fprintf(stderr, "cannot write --json %s\n", json_path.c_str());
    }
  }
  ~Report() {
    if (f_ != nullptr) std::fclose(f_);
  }
  Report(const Report&) = delete;
  Report& operator=(const Report&) = delete;

  void set_device(const std::string& device) { device_ = device; }
  void Json(nlohmann::json row) {
    if (f_ == nullptr) return;
    row["device"] = device_;
    std::fprintf(f_, "%s\n", row.dump().c_str());
    std::fflush(f_);
  }

 private:
  FILE* f_ = nullptr;
  std::string device_;
};

// ---------------------------------------------------------------------------------------------
// Device rates measured in the same run

struct DeviceRates {
  std::string name;
  int sms = 0;
  double total_gib = 0;
  double copy_gbs = 0;
  double gemm_tflops = 0;
};

template <typename F>
absl::StatusOr<double> TimeEventsMs(cudaStream_t stream, int warmup, int iters, F launch) {
  cudaEvent_t a = nullptr, b = nullptr;
  STEP_CUDA(cudaEventCreate(&a));
  STEP_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) RETURN_IF_ERROR(launch());
  STEP_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    STEP_CUDA(cudaEventRecord(a, stream));
    RETURN_IF_ERROR(launch());
    STEP_CUDA(cudaEventRecord(b, stream));
    STEP_CUDA(cudaEventSynchronize(b));
    float t = 0;
    STEP_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(ms);
}

absl::StatusOr<double> CopyBandwidthGBs(cudaStream_t stream, int iters) {
  const size_t bytes = size_t{1} << 30;
  void* src = nullptr;
  void* dst = nullptr;
  STEP_CUDA(cudaMalloc(&src, bytes));
  STEP_CUDA(cudaMalloc(&dst, bytes));
  STEP_CUDA(cudaMemset(src, 1, bytes));
  absl::StatusOr<double> ms = TimeEventsMs(stream, 2, iters, [&]() -> absl::Status {
    STEP_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    return absl::OkStatus();
  });
  cudaFree(src);
  cudaFree(dst);
  RETURN_IF_ERROR(ms.status());
  return 2.0 * bytes / (*ms * 1e-3) / 1e9;
}

absl::StatusOr<double> GemmTflops(cudaStream_t stream, int iters) {
  const int64_t n = 8192;
  const size_t elems = static_cast<size_t>(n) * n;
  const size_t ws_bytes = size_t{32} << 20;
  kernels::Bf16* a = nullptr;
  kernels::Bf16* b = nullptr;
  kernels::Bf16* d = nullptr;
  void* ws = nullptr;
  STEP_CUDA(cudaMalloc(reinterpret_cast<void**>(&a), elems * 2));
  STEP_CUDA(cudaMalloc(reinterpret_cast<void**>(&b), elems * 2));
  STEP_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), elems * 2));
  STEP_CUDA(cudaMalloc(&ws, ws_bytes));
  for (auto [ptr, seed] : {std::pair{a, 11ull}, std::pair{b, 12ull}}) {
    kernels::FillRandomParams fp;
    fp.data = ptr;
    fp.n = static_cast<int64_t>(elems);
    fp.seed = seed;
    fp.scale = 0.05f;
    RETURN_IF_ERROR(kernels::FillRandom(fp, stream));
  }
  cublasLtHandle_t lt = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  STEP_CUBLAS(cublasLtCreate(&lt));
  STEP_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  STEP_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  STEP_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  STEP_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, n, n, n));
  STEP_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, n, n, n));
  STEP_CUBLAS(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, n, n));
  STEP_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  STEP_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws_bytes, sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  STEP_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, &result, &found));
  if (found == 0) return absl::InternalError("cuBLASLt: no algorithm for the 8192^3 GEMM");
  const float alpha = 1.0f, beta = 0.0f;
  absl::StatusOr<double> ms = TimeEventsMs(stream, 3, iters, [&]() -> absl::Status {
    STEP_CUBLAS(cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, d, ld, d, ld, &result.algo,
                               ws, ws_bytes, stream));
    return absl::OkStatus();
  });
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(lt);
  cudaFree(a);
  cudaFree(b);
  cudaFree(d);
  cudaFree(ws);
  RETURN_IF_ERROR(ms.status());
  return 2.0 * n * n * n / (*ms * 1e-3) / 1e12;
}

absl::StatusOr<DeviceRates> MeasureDevice(int iters) {
  DeviceRates r;
  cudaDeviceProp prop;
  STEP_CUDA(cudaGetDeviceProperties(&prop, 0));
  r.name = prop.name;
  r.sms = prop.multiProcessorCount;
  r.total_gib = prop.totalGlobalMem / kGiB;
  cudaStream_t stream = nullptr;
  STEP_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int n = std::max(iters, 10);
  absl::StatusOr<double> copy = CopyBandwidthGBs(stream, n);
  absl::StatusOr<double> gemm = copy.ok() ? GemmTflops(stream, n) : copy.status();
  cudaStreamDestroy(stream);
  RETURN_IF_ERROR(copy.status());
  RETURN_IF_ERROR(gemm.status());
  r.copy_gbs = *copy;
  r.gemm_tflops = *gemm;
  return r;
}

// ---------------------------------------------------------------------------------------------
// The benchmark

struct StepTiming {
  double median_ms = 0;
  double min_ms = 0;
  double host_prep_ms = 0;  // mean host time inside Forward before its first launch (GPU idle)
};

class StepBench {
 public:
  StepBench(const Options& o, const ModelConfig& c, const DeviceRates& rates, Report* report)
      : o_(o), c_(c), rates_(rates), mb_(ComputeModelBytes(c)), report_(report) {}
  ~StepBench() {
    if (replay_host_ != nullptr) cudaFreeHost(replay_host_);
    if (replay_dev_ != nullptr) cudaFree(replay_dev_);
  }
  StepBench(const StepBench&) = delete;
  StepBench& operator=(const StepBench&) = delete;

  // Sizes the KV pool from the free memory left after the weights and `reserve_gib` of
  // activations and workspaces, then creates the executor over random weights.
  absl::Status CreateExecutor() {
    STEP_CUDA(cudaSetDevice(0));
    STEP_CUDA(cudaFree(nullptr));
    size_t free_bytes = 0, total_bytes = 0;
    STEP_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
    const int64_t reserve = static_cast<int64_t>(o_.reserve_gib * kGiB);
    const int64_t pool = static_cast<int64_t>(free_bytes) - mb_.total_bytes - reserve;
    const int64_t per_block = CudaExecutor::BytesPerBlock(c_, o_.block_size);
    const int64_t blocks =
        std::min<int64_t>(pool / per_block, std::numeric_limits<int32_t>::max() - 1);
    if (blocks < 1) {
      return absl::ResourceExhaustedError(
          absl::StrCat("no room for a KV pool: ", free_bytes / kGiB, " GiB free, weights ",
                       mb_.total_bytes / kGiB, " GiB, reserve ", o_.reserve_gib, " GiB"));
    }
    const auto t0 = Clock::now();
    ASSIGN_OR_RETURN(exec_, CudaExecutor::CreateRandom(c_, o_.seed, blocks, o_.block_size, 0));
    create_ms_ = MsSince(t0);
    num_blocks_ = blocks;
    pool_gib_ = blocks * per_block / kGiB;
    // A shuffled order of every block id: decode and prefill tables take prefixes of it.
    shuffled_.resize(blocks);
    std::iota(shuffled_.begin(), shuffled_.end(), 0);
    std::mt19937_64 rng(o_.seed * 7919 + 1);
    std::shuffle(shuffled_.begin(), shuffled_.end(), rng);
    sample_ = exec_->samples_tokens();
    exec_->set_use_cuda_graphs(o_.cuda_graphs != 0);
    std::printf(
        "executor: %s, random bf16 weights %.2f GiB (seed %llu), KV pool %lld blocks of %d "
        "(%.1f GiB, %lld B per block), created in %.0f ms; %s\n",
        c_.name.c_str(), mb_.total_bytes / kGiB, static_cast<unsigned long long>(o_.seed),
        static_cast<long long>(blocks), o_.block_size, pool_gib_, static_cast<long long>(per_block),
        create_ms_,
        sample_ ? "tokens sampled on the device (no logits download)"
                : "logits downloaded to the host every step (the executor does not sample)");
    return absl::OkStatus();
  }

  absl::Status RunDecode();
  absl::Status RunPrefill();
  absl::Status RunOverhead();
  void PrintMetadata();

 private:
  int64_t BlocksPerSeq(int64_t kvs) const {
    return static_cast<int64_t>(c_.num_hidden_layers) * c_.num_key_value_heads *
           ((kvs + o_.block_size - 1) / o_.block_size);
  }
  // Block tables of `seqs` sequences whose every head holds `kvs` KVs, from the shuffled ids.
  std::vector<SequenceBlockTables> MakeTables(int32_t seqs, int32_t kvs) const {
    const int32_t heads = c_.num_hidden_layers * c_.num_key_value_heads;
    const int32_t per_head = (kvs + o_.block_size - 1) / o_.block_size;
    std::vector<SequenceBlockTables> t(seqs);
    int64_t at = 0;
    for (SequenceBlockTables& s : t) {
      s.heads.resize(heads);
      for (HeadBlockTable& h : s.heads) {
        h.num_kvs = kvs;
        h.blocks.assign(shuffled_.begin() + at, shuffled_.begin() + at + per_head);
        at += per_head;
      }
    }
    return t;
  }
  void SetSampling(ForwardBatch* b) const {
    if (!sample_) return;
    b->return_logits = false;
    for (ForwardSequence& f : b->seqs) {
      f.sample = true;
      f.sampling.temperature = 0.0f;
    }
  }
  // Wall-clock Forward(): `warmup` untimed calls, then the median of `iters`.
  absl::StatusOr<StepTiming> TimeForward(const ForwardBatch& b, int warmup, int iters,
                                         std::string* path) {
    for (int i = 0; i < warmup; ++i) RETURN_IF_ERROR(exec_->Forward(b, &out_));
    const CudaExecutor::Stats before = exec_->stats();
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = Clock::now();
      RETURN_IF_ERROR(exec_->Forward(b, &out_));
      ms.push_back(MsSince(t0));
    }
    const CudaExecutor::Stats after = exec_->stats();
    *path = PathOf(before, after);
    StepTiming t;
    t.host_prep_ms = (after.host_prep_ns - before.host_prep_ns) / 1e6 / std::max(iters, 1);
    t.median_ms = Median(ms);
    t.min_ms = *std::min_element(ms.begin(), ms.end());
    return t;
  }
  // Replays the host side of Forward() that grows with the batch's blocks: ValidateForwardBatch
  // (median of 3).
  absl::StatusOr<double> ReplayValidateMs(const ForwardBatch& b);
  // Replays the logits download of `rows` rows: device -> pinned -> std::vector (median of 3).
  absl::StatusOr<double> ReplayLogitsMs(int64_t rows);
  absl::Status GrowReplay(size_t host_bytes, size_t dev_bytes);
  struct DecodePoint {
    bool fits = false;
    StepTiming t;
    double host_ms = 0, logits_ms = 0;
    int64_t kv_bytes = 0;
    std::string path;  // what the timed steps did: "graph", "direct", "full tables"
  };
  // Path of the Forward calls between two stats snapshots.
  static std::string PathOf(const CudaExecutor::Stats& a, const CudaExecutor::Stats& b) {
    const int64_t calls = b.forward_calls - a.forward_calls;
    const int64_t graphs = b.graph_launches - a.graph_launches;
    const int64_t full = b.full_table_uploads - a.full_table_uploads;
    std::string p = graphs == calls ? "graph" : (graphs == 0 ? "direct" : "graph (part)");
    if (full > 0) p += ", full tables";
    return p;
  }
  int64_t NewSeqId() { return next_seq_id_++; }
  absl::StatusOr<DecodePoint> DecodeStep(int32_t batch, int32_t context, bool scores, bool replay);

  const Options& o_;
  const ModelConfig c_;
  const DeviceRates rates_;
  const ModelBytes mb_;
  Report* report_;
  std::unique_ptr<CudaExecutor> exec_;
  int64_t num_blocks_ = 0;
  double pool_gib_ = 0;
  double create_ms_ = 0;
  bool sample_ = false;
  std::vector<int32_t> shuffled_;
  int64_t next_seq_id_ = 1;
  ForwardOutput out_;
  void* replay_host_ = nullptr;
  void* replay_dev_ = nullptr;
  size_t replay_host_bytes_ = 0, replay_dev_bytes_ = 0;
  // Overhead results shared with the amortised summary.
  struct OverheadStep {
    int32_t batch = 0;
    double off_ms = 0, on_ms = 0;
  };
  std::vector<OverheadStep> overhead_steps_;
};

absl::Status StepBench::GrowReplay(size_t host_bytes, size_t dev_bytes) {
  if (host_bytes > replay_host_bytes_) {
    if (replay_host_ != nullptr) cudaFreeHost(replay_host_);
    replay_host_ = nullptr;
    replay_host_bytes_ = 0;
    STEP_CUDA(cudaMallocHost(&replay_host_, host_bytes));
    replay_host_bytes_ = host_bytes;
  }
  if (dev_bytes > replay_dev_bytes_) {
    if (replay_dev_ != nullptr) cudaFree(replay_dev_);
    replay_dev_ = nullptr;
    replay_dev_bytes_ = 0;
    STEP_CUDA(cudaMalloc(&replay_dev_, dev_bytes));
    replay_dev_bytes_ = dev_bytes;
  }
  return absl::OkStatus();
}

absl::StatusOr<double> StepBench::ReplayValidateMs(const ForwardBatch& b) {
  std::vector<double> ms;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(ValidateForwardBatch(b, c_, exec_->layout()));
    ms.push_back(MsSince(t0));
  }
  return Median(ms);
}

absl::StatusOr<double> StepBench::ReplayLogitsMs(int64_t rows) {
  const size_t bytes = static_cast<size_t>(rows) * c_.vocab_size * sizeof(float);
  RETURN_IF_ERROR(GrowReplay(bytes, bytes));
  std::vector<float> host(static_cast<size_t>(rows) * c_.vocab_size);
  std::vector<double> ms;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    STEP_CUDA(cudaMemcpy(replay_host_, replay_dev_, bytes, cudaMemcpyDeviceToHost));
    std::memcpy(host.data(), replay_host_, bytes);
    ms.push_back(MsSince(t0));
  }
  return Median(ms);
}

absl::StatusOr<StepBench::DecodePoint> StepBench::DecodeStep(int32_t batch, int32_t context,
                                                             bool scores, bool replay) {
  DecodePoint p;
  p.kv_bytes = static_cast<int64_t>(batch) * context * mb_.kv_bytes_per_token;
  if (static_cast<int64_t>(batch) * BlocksPerSeq(context) > num_blocks_) return p;
  const std::vector<SequenceBlockTables> tables = MakeTables(batch, context);
  std::vector<int32_t> tokens(batch);
  ForwardBatch b;
  b.seqs.resize(batch);
  for (int32_t i = 0; i < batch; ++i) {
    tokens[i] = static_cast<int32_t>((int64_t{i} * 7919 + 13) % c_.vocab_size);
    ForwardSequence& f = b.seqs[i];
    f.seq_id = NewSeqId();
    f.tokens = std::span<const int32_t>(&tokens[i], 1);
    f.start_position = context - 1;
    f.tables = &tables[i];
    f.score_queries = scores ? 1 : 0;
  }
  SetSampling(&b);
  absl::StatusOr<StepTiming> t = TimeForward(b, 2, o_.iters, &p.path);
  for (const ForwardSequence& f : b.seqs) exec_->ForgetSequence(f.seq_id);
  if (absl::IsResourceExhausted(t.status())) return p;  // scratch did not fit: reported as such
  RETURN_IF_ERROR(t.status());
  p.fits = true;
  p.t = *t;
  if (replay) {
    ASSIGN_OR_RETURN(p.host_ms, ReplayValidateMs(b));
    if (!sample_) {
      ASSIGN_OR_RETURN(p.logits_ms, ReplayLogitsMs(batch));
    }
  }
  return p;
}

absl::Status StepBench::RunDecode() {
  std::printf(
      "\n## Decode step, compression off (%s, %d layers, %d/%d heads x %d, block %d)\n\n"
      "Floor = (weight bytes %.2f GB + KV bytes) / copy bandwidth %.0f GB/s. Step = wall clock of "
      "Forward() (one token per sequence), median of %d after 2 warm-ups. validate = replay of "
      "ValidateForwardBatch (host, walks every block id); logits = replay of the logits "
      "download (0 when the executor samples); prep = host time inside Forward before its first "
      "launch (validation, batch layout, block-table mirror update: the GPU waits), mean of the "
      "timed steps; path: graph = CUDA graph replay.\n\n",
      c_.name.c_str(), c_.num_hidden_layers, c_.num_attention_heads, c_.num_key_value_heads,
      c_.head_dim, o_.block_size, mb_.decode_read_bytes / 1e9, rates_.copy_gbs, o_.iters);
  std::printf(
      "| batch | context | KV GB | step ms | floor ms | step/floor | achieved GB/s | %% of copy | "
      "validate ms | logits ms | prep ms | path "
      "|\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  struct Cell {
    int32_t batch, context;
    bool fits;
    double ratio;
  };
  std::vector<Cell> cells;
  for (int32_t context : o_.contexts) {
    for (int32_t batch : o_.batches) {
      ASSIGN_OR_RETURN(DecodePoint p, DecodeStep(batch, context, false, true));
      const double bytes = static_cast<double>(mb_.decode_read_bytes + p.kv_bytes);
      const double floor_ms = bytes / (rates_.copy_gbs * 1e9) * 1e3;
      nlohmann::json row = {{"mode", "decode"},
                            {"batch", batch},
                            {"context", context},
                            {"kv_bytes", p.kv_bytes},
                            {"weight_bytes", mb_.decode_read_bytes},
                            {"copy_gbs", rates_.copy_gbs},
                            {"floor_ms", floor_ms},
                            {"fits", p.fits}};
      if (!p.fits) {
        std::printf("| %d | %d | %.1f | does not fit (%.1f GiB KV pool) | | | | | | | | |\n", batch,
                    context, p.kv_bytes / 1e9, pool_gib_);
        cells.push_back({batch, context, false, 0});
      } else {
        const double ratio = p.t.median_ms / floor_ms;
        const double gbs = bytes / (p.t.median_ms * 1e-3) / 1e9;
        std::printf(
            "| %d | %d | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f%% | %.2f | %.2f | %.2f | %s |\n",
            batch, context, p.kv_bytes / 1e9, p.t.median_ms, floor_ms, ratio, gbs,
            100.0 * gbs / rates_.copy_gbs, p.host_ms, p.logits_ms, p.t.host_prep_ms,
            p.path.c_str());
        row["host_prep_ms"] = p.t.host_prep_ms;
        row["step_ms"] = p.t.median_ms;
        row["step_min_ms"] = p.t.min_ms;
        row["ratio_to_floor"] = ratio;
        row["achieved_gbs"] = gbs;
        row["validate_ms"] = p.host_ms;
        row["path"] = p.path;
        row["logits_ms"] = p.logits_ms;
        row["sampled_on_device"] = sample_;
        cells.push_back({batch, context, true, ratio});
      }
      std::fflush(stdout);
      report_->Json(std::move(row));
    }
  }
  // The same figures as a batch x context matrix of step/floor.
  std::printf("\nstep / floor (goal: <= 1.3 at batch >= 32)\n\n| batch \\ context |");
  for (int32_t context : o_.contexts) std::printf(" %d |", context);
  std::printf("\n|---|");
  for (size_t i = 0; i < o_.contexts.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (int32_t batch : o_.batches) {
    std::printf("| %d |", batch);
    for (int32_t context : o_.contexts) {
      for (const Cell& cell : cells) {
        if (cell.batch != batch || cell.context != context) continue;
        if (cell.fits) {
          std::printf(" %.2f%s |", cell.ratio, batch >= 32 && cell.ratio > 1.3 ? " (missed)" : "");
        } else {
          std::printf(" does not fit |");
        }
      }
    }
    std::printf("\n");
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status StepBench::RunPrefill() {
  std::printf(
      "\n## Prefill throughput and MFU (%s)\n\nMFU = model FLOPs / time / bf16 GEMM rate "
      "%.0f TFLOP/s (cuBLASLt 8192^3, same run). Model FLOPs = 2 * %.3g layer matmul params * "
      "tokens + 2 * vocab * hidden per logits row + causal attention 4 * L * Hq * d * sum(n^2)/2. "
      "Wall clock of Forward() over the prompts (%s), median of %d after 1 warm-up.\n\n",
      c_.name.c_str(), rates_.gemm_tflops, static_cast<double>(mb_.layer_matmul_params),
      o_.prefill_chunk > 0 ? absl::StrCat("chunks of ", o_.prefill_chunk).c_str() : "one call",
      o_.iters);
  std::printf(
      "| prompts | tokens | time ms | tokens/s | model TFLOP | achieved TFLOP/s | MFU |\n"
      "|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(static_cast<uint32_t>(o_.seed) + 77);
  for (const PrefillCase& pc : o_.prefill) {
    const int64_t tokens = static_cast<int64_t>(pc.seqs) * pc.tokens;
    nlohmann::json row = {{"mode", "prefill"}, {"seqs", pc.seqs}, {"prompt_tokens", pc.tokens}};
    if (static_cast<int64_t>(pc.seqs) * BlocksPerSeq(pc.tokens) > num_blocks_) {
      std::printf("| %d x %d | %lld | does not fit | | | | |\n", pc.seqs, pc.tokens,
                  static_cast<long long>(tokens));
      row["fits"] = false;
      report_->Json(std::move(row));
      continue;
    }
    std::vector<int32_t> ids(tokens);
    std::uniform_int_distribution<int32_t> tok(0, c_.vocab_size - 1);
    for (int32_t& t : ids) t = tok(rng);
    const std::vector<SequenceBlockTables> full = MakeTables(pc.seqs, pc.tokens);
    const int32_t chunk = o_.prefill_chunk > 0 ? o_.prefill_chunk : pc.tokens;
    const int64_t first_id = next_seq_id_;
    next_seq_id_ += pc.seqs;
    // One ForwardBatch per chunk; chunk c's tables hold the prompt's first `end` KVs.
    std::vector<std::vector<SequenceBlockTables>> chunk_tables;
    std::vector<ForwardBatch> batches;
    for (int32_t begin = 0; begin < pc.tokens; begin += chunk) {
      const int32_t end = std::min(pc.tokens, begin + chunk);
      std::vector<SequenceBlockTables> t = full;
      for (SequenceBlockTables& s : t) {
        for (HeadBlockTable& h : s.heads) {
          h.num_kvs = end;
          h.blocks.resize((end + o_.block_size - 1) / o_.block_size);
        }
      }
      chunk_tables.push_back(std::move(t));
      ForwardBatch b;
      for (int32_t i = 0; i < pc.seqs; ++i) {
        ForwardSequence f;
        f.seq_id = first_id + i;
        f.tokens = std::span<const int32_t>(
            ids.data() + static_cast<int64_t>(i) * pc.tokens + begin, end - begin);
        f.start_position = begin;
        b.seqs.push_back(f);
      }
      SetSampling(&b);
      batches.push_back(std::move(b));
    }
    for (size_t k = 0; k < batches.size(); ++k) {
      for (int32_t i = 0; i < pc.seqs; ++i) batches[k].seqs[i].tables = &chunk_tables[k][i];
    }
    // Each run is a new set of sequences: the block-table mirror starts empty, as it would.
    auto run_all = [&]() -> absl::Status {
      for (int32_t i = 0; i < pc.seqs; ++i) exec_->ForgetSequence(first_id + i);
      for (const ForwardBatch& b : batches) RETURN_IF_ERROR(exec_->Forward(b, &out_));
      return absl::OkStatus();
    };
    absl::Status warm = run_all();
    if (absl::IsResourceExhausted(warm)) {
      std::printf("| %d x %d | %lld | activations do not fit: %s | | | | |\n", pc.seqs, pc.tokens,
                  static_cast<long long>(tokens), std::string(warm.message()).c_str());
      row["fits"] = false;
      report_->Json(std::move(row));
      continue;
    }
    RETURN_IF_ERROR(warm);
    std::vector<double> ms;
    for (int it = 0; it < o_.iters; ++it) {
      const auto t0 = Clock::now();
      RETURN_IF_ERROR(run_all());
      ms.push_back(MsSince(t0));
    }
    for (int32_t i = 0; i < pc.seqs; ++i) exec_->ForgetSequence(first_id + i);
    const double t_ms = Median(ms);
    const double n2 = static_cast<double>(pc.seqs) * pc.tokens * static_cast<double>(pc.tokens);
    const double flops = 2.0 * mb_.layer_matmul_params * tokens +
                         2.0 * c_.vocab_size * c_.hidden_size * pc.seqs * batches.size() +
                         4.0 * c_.num_hidden_layers * c_.num_attention_heads * c_.head_dim * n2 / 2;
    const double tflops = flops / (t_ms * 1e-3) / 1e12;
    const double mfu = tflops / rates_.gemm_tflops;
    std::printf("| %d x %d | %lld | %.1f | %.0f | %.1f | %.1f | %.1f%% |\n", pc.seqs, pc.tokens,
                static_cast<long long>(tokens), t_ms, tokens / (t_ms * 1e-3), flops / 1e12, tflops,
                100.0 * mfu);
    std::fflush(stdout);
    row["fits"] = true;
    row["chunks"] = batches.size();
    row["time_ms"] = t_ms;
    row["time_min_ms"] = *std::min_element(ms.begin(), ms.end());
    row["tokens_per_s"] = tokens / (t_ms * 1e-3);
    row["model_flops"] = flops;
    row["achieved_tflops"] = tflops;
    row["gemm_tflops"] = rates_.gemm_tflops;
    row["mfu"] = mfu;
    report_->Json(std::move(row));
  }
  return absl::OkStatus();
}

absl::Status StepBench::RunOverhead() {
  const int32_t n = o_.overhead_context;
  std::printf(
      "\n## Compression overheads (%s, context %d, rate %.1f, window w=%d pooled k=%d, "
      "protected window %d)\n\n",
      c_.name.c_str(), n, o_.rate, o_.window, o_.pool_kernel, o_.protected_window);

  // ---- decode step with and without decode-score collection ----
  std::printf(
      "Decode step at context %d with score collection (score_queries=1) vs without; median of "
      "%d.\n\n| batch | step ms, scores off | step ms, scores on | score collection ms | %% of "
      "step |\n|---|---|---|---|---|\n",
      n, o_.iters);
  overhead_steps_.clear();
  for (int32_t batch : o_.overhead_batches) {
    ASSIGN_OR_RETURN(DecodePoint off, DecodeStep(batch, n, false, false));
    DecodePoint on;
    if (off.fits) {
      ASSIGN_OR_RETURN(on, DecodeStep(batch, n, true, false));
    }
    nlohmann::json row = {{"mode", "overhead_decode_scores"}, {"batch", batch}, {"context", n}};
    if (!off.fits || !on.fits) {
      std::printf("| %d | does not fit (%.1f GB of KV, %.1f GiB pool) | | | |\n", batch,
                  off.kv_bytes / 1e9, pool_gib_);
      row["fits"] = false;
    } else {
      const double d = on.t.median_ms - off.t.median_ms;
      std::printf("| %d | %.2f | %.2f | %.2f | %.1f%% |\n", batch, off.t.median_ms, on.t.median_ms,
                  d, 100.0 * d / off.t.median_ms);
      row["fits"] = true;
      row["step_off_ms"] = off.t.median_ms;
      row["step_on_ms"] = on.t.median_ms;
      row["score_share"] = d / off.t.median_ms;
      overhead_steps_.push_back({batch, off.t.median_ms, on.t.median_ms});
    }
    std::fflush(stdout);
    report_->Json(std::move(row));
  }

  // ---- prefill with and without window scores; compression of the sequence at `rate` ----
  KvManagerOptions ko;
  ko.layout = exec_->layout();
  ASSIGN_OR_RETURN(std::unique_ptr<KvManager> kv, KvManager::Create(ko));
  std::unique_ptr<CompressionPolicy> policy =
      MakeCompressionPolicy(CompressionPolicyKind::kKvCompress);
  EvictionConstraints cons;
  cons.protected_window = o_.protected_window;
  std::vector<int32_t> ids(n);
  std::mt19937 rng(static_cast<uint32_t>(o_.seed) + 99);
  std::uniform_int_distribution<int32_t> tok(0, c_.vocab_size - 1);
  for (int32_t& t : ids) t = tok(rng);
  int64_t seq = 0;
  auto prefill_batch = [&](const SequenceBlockTables* t, bool scores) {
    ForwardBatch b;
    b.score_pool_kernel = o_.pool_kernel;
    ForwardSequence f;
    f.seq_id = seq;
    f.tokens = ids;
    f.start_position = 0;
    f.tables = t;
    f.score_queries = scores ? o_.window : 0;
    f.score_pool = scores;
    b.seqs.push_back(f);
    SetSampling(&b);
    return b;
  };
  const bool on_device = exec_->evicts_on_device() && o_.evict_path != "host";
  const bool on_host = o_.evict_path != "device" || !exec_->evicts_on_device();
  const int iters = std::clamp(o_.iters, 1, 3);
  std::vector<double> p0, p1, plan_ms, apply_ms, move_ms, dev_ms, dev_apply_ms;
  int64_t evict_blocks = 0, freed = 0, evicted_kvs = 0, moves_n = 0, dev_freed = 0, kvs_before = 0;
  for (int it = 0; it < iters + 1; ++it) {  // iteration 0 warms up
    const bool timed = it > 0;
    seq = NewSeqId();
    RETURN_IF_ERROR(kv->AddSequence(seq));
    RETURN_IF_ERROR(kv->Append(seq, n));
    const SequenceBlockTables* t = kv->Tables(seq);
    auto t0 = Clock::now();
    RETURN_IF_ERROR(exec_->Forward(prefill_batch(t, false), &out_));
    if (timed) p0.push_back(MsSince(t0));
    t0 = Clock::now();
    RETURN_IF_ERROR(exec_->Forward(prefill_batch(t, true), &out_));
    if (timed) p1.push_back(MsSince(t0));
    ASSIGN_OR_RETURN(SequenceUsage usage, kv->Usage(seq));
    kvs_before = usage.kvs_held;
    evict_blocks = EvictBlocksForRate(ko.layout, n, usage.kvs_held, o_.rate, o_.protected_window);
    if (!on_host) {
      RETURN_IF_ERROR(kv->FreeSequence(seq));
      exec_->ForgetSequence(seq);
    }
    // Host selection through slot_reader(), metadata update, compaction moves on the device.
    if (on_host) {
      t0 = Clock::now();
      exec_->slot_reader().Prefetch(*kv->Tables(seq));  // one transfer, as the engine does
      ASSIGN_OR_RETURN(EvictionPlan plan, PlanSequenceEviction(*kv, seq, exec_->slot_reader(),
                                                               evict_blocks, cons, seq, *policy));
      if (timed) plan_ms.push_back(MsSince(t0));
      std::vector<KvMove> moves;
      t0 = Clock::now();
      RETURN_IF_ERROR(kv->ApplyEviction(seq, plan, CompressionTrigger::kPrefill, &moves));
      if (timed) apply_ms.push_back(MsSince(t0));
      t0 = Clock::now();
      RETURN_IF_ERROR(exec_->MoveKvs(moves));
      if (timed) move_ms.push_back(MsSince(t0));
      freed = plan.blocks_freed;
      evicted_kvs = plan.kvs_evicted;
      moves_n = static_cast<int64_t>(moves.size());
      RETURN_IF_ERROR(kv->FreeSequence(seq));
      exec_->ForgetSequence(seq);
    }
    if (!on_device) continue;
    // Device selection + compaction; only per-head counts come back.
    seq = NewSeqId();
    RETURN_IF_ERROR(kv->AddSequence(seq));
    RETURN_IF_ERROR(kv->Append(seq, n));
    t = kv->Tables(seq);
    RETURN_IF_ERROR(exec_->Forward(prefill_batch(t, true), &out_));
    t0 = Clock::now();
    ASSIGN_OR_RETURN(std::vector<int32_t> counts, exec_->EvictOnDevice(*t, n, evict_blocks, cons));
    if (timed) dev_ms.push_back(MsSince(t0));
    t0 = Clock::now();
    ASSIGN_OR_RETURN(EvictionPlan dplan, PlanFromBlockCounts(ko.layout, *t, counts));
    RETURN_IF_ERROR(kv->ApplyEviction(seq, dplan, CompressionTrigger::kPrefill, nullptr));
    if (timed) dev_apply_ms.push_back(MsSince(t0));
    dev_freed = dplan.blocks_freed;
    if (!on_host) evicted_kvs = dplan.kvs_evicted;
    RETURN_IF_ERROR(kv->FreeSequence(seq));
    exec_->ForgetSequence(seq);
  }
  RETURN_IF_ERROR(kv->CheckInvariants());
  const double tp0 = Median(p0), tp1 = Median(p1);
  const double dp = tp1 - tp0;
  const double host_c = on_host ? Median(plan_ms) + Median(apply_ms) + Median(move_ms) : 0;
  const double dev_c = on_device ? Median(dev_ms) + Median(dev_apply_ms) : 0;
  const double comp = on_device ? dev_c : host_c;
  const double step_ref = overhead_steps_.empty() ? 0 : overhead_steps_.front().on_ms;
  const int32_t step_batch = overhead_steps_.empty() ? 0 : overhead_steps_.front().batch;
  std::printf(
      "\nOne sequence of %d tokens: prefill %.1f ms without scores; compression at rate %.1f "
      "evicts %lld of %lld KVs (%lld of %lld blocks requested freed, %lld compaction moves), "
      "median of %d.\n\n",
      n, tp0, o_.rate, static_cast<long long>(evicted_kvs), static_cast<long long>(kvs_before),
      static_cast<long long>(freed), static_cast<long long>(evict_blocks),
      static_cast<long long>(moves_n), iters);
  std::printf(
      "| part | ms | %% of the prefill (%d tokens) | %% of a decode step (batch %d, "
      "scores on) |\n|---|---|---|---|\n",
      n, step_batch);
  auto line = [&](const char* what, double ms, const char* key) {
    const std::string of_step =
        step_ref > 0 ? absl::StrCat(absl::SixDigits(100.0 * ms / step_ref), "%") : "n/a";
    std::printf("| %s | %.2f | %.2f%% | %s |\n", what, ms, 100.0 * ms / tp0, of_step.c_str());
    report_->Json({{"mode", "overhead_part"},
                   {"part", key},
                   {"context", n},
                   {"ms", ms},
                   {"prefill_ms", tp0},
                   {"step_ms", step_ref},
                   {"step_batch", step_batch}});
  };
  line("prefill window scores (w, pooled), per prompt", dp, "prefill_scores");
  if (on_host) {
    line("host selection (slot_reader Prefetch + PlanSequenceEviction)", Median(plan_ms),
         "host_plan");
    line("host metadata update (ApplyEviction)", Median(apply_ms), "host_apply");
    line("compaction (MoveKvs of the host plan)", Median(move_ms), "host_moves");
    line("host path total", host_c, "host_total");
  }
  if (on_device) {
    line("device selection + compaction (EvictOnDevice)", Median(dev_ms), "device_evict");
    line("counts-only plan + ApplyEviction", Median(dev_apply_ms), "device_apply");
    line("device path total", dev_c, "device_total");
    if (on_host && dev_freed != freed) {
      std::printf("\nnote: EvictOnDevice freed %lld blocks, the host plan %lld\n",
                  static_cast<long long>(dev_freed), static_cast<long long>(freed));
    }
  } else {
    std::printf("| device selection + compaction (EvictOnDevice) | not run: %s | | |\n",
                exec_->evicts_on_device() ? "--evict-path host" : "evicts_on_device() is false");
  }

  // ---- amortised share in the throughput setting ----
  const int32_t g = o_.gen_tokens;
  std::printf(
      "\nAmortised at rate %.1f in the throughput setting (every sequence is compressed once "
      "after its %d-token prefill and then generates G = %d tokens; %s path): a step of batch B "
      "retires B/G sequences, so\n  overhead per step = (t_on - t_off) + (B/G) * (prefill score "
      "cost + compression cost), as %% of t_off;\n  share of a request's device time = (G/B * "
      "(t_on - t_off) + prefill score cost + compression) / (prefill + G/B * t_on + "
      "compression).\n\n| batch | score collection %% | prefill scores + compression, amortised "
      "%% | combined %% of step (goal <= 5) | share of a request's device time %% "
      "|\n|---|---|---|---|---|\n",
      o_.rate, n, g, on_device ? "device" : "host");
  for (const OverheadStep& s : overhead_steps_) {
    const double score = 100.0 * (s.on_ms - s.off_ms) / s.off_ms;
    const double amort = 100.0 * (static_cast<double>(s.batch) / g) * (dp + comp) / s.off_ms;
    const double req = 100.0 *
                       (static_cast<double>(g) / s.batch * (s.on_ms - s.off_ms) + dp + comp) /
                       (tp1 + static_cast<double>(g) / s.batch * s.on_ms + comp);
    std::printf("| %d | %.2f | %.2f | %.2f%s | %.2f |\n", s.batch, score, amort, score + amort,
                score + amort > 5.0 ? " (missed)" : "", req);
    report_->Json({{"mode", "overhead_amortised"},
                   {"batch", s.batch},
                   {"context", n},
                   {"rate", o_.rate},
                   {"gen_tokens", g},
                   {"path", on_device ? "device" : "host"},
                   {"score_pct", score},
                   {"amortised_pct", amort},
                   {"combined_pct", score + amort},
                   {"request_share_pct", req},
                   {"prefill_ms", tp0},
                   {"prefill_scores_ms", dp},
                   {"compression_ms", comp},
                   {"step_off_ms", s.off_ms},
                   {"step_on_ms", s.on_ms}});
  }
  if (overhead_steps_.empty()) std::printf("| (no decode batch fit) | | | | |\n");
  std::fflush(stdout);
  return absl::OkStatus();
}

void StepBench::PrintMetadata() {
  const int32_t b = o_.block_size;
  const int32_t kd = c_.head_dim <= 64 ? 64 : 128;
  const double kv = 2.0 * kd * 2;  // K + V bf16 per KV (padded head_dim)
  const double per_kv_device = static_cast<double>(CudaExecutor::BytesPerBlock(c_, b)) / b;
  const double score_pos = per_kv_device - kv;
  const double table = 2.0 * sizeof(int32_t) / b;  // host KvManager table + per-step device copy
  const double ours = score_pos + table;
  const int32_t group = c_.num_attention_heads / c_.num_key_value_heads;
  // The fork's bytes per block (reference/kvcompress-spec.md §1.3): 2*b*d*2 + 21 + b*(12 + 8G).
  const double fork_slot = 12.0 + 8.0 * group;
  const double fork_block = 21.0 / b;
  const double fork = fork_slot + fork_block;
  std::printf(
      "\n## Per-KV metadata overhead (%s, head_dim %d, block %d, GQA group %d)\n\n"
      "| bytes per KV | kvc | KV-Compress fork |\n|---|---|---|\n"
      "| K + V (bf16) | %.0f | %.0f |\n"
      "| per-KV slot metadata (kvc: score fp32 + position int32; fork: 12 + 8G) | %.2f | %.0f |\n"
      "| per-block metadata / b (kvc: int32 table entry on the host + its device mirror) | %.3f | "
      "%.3f (21 B) |\n"
      "| total metadata | %.3f (+%.2f%%) | %.2f (+%.2f%%; the spec quotes +8.8%% for "
      "Llama-3.1-8B) |\n\n"
      "Per (sequence, layer, kv_head) counts (int32) and table offsets are per head, not per "
      "KV: 8 B per head, %.4f B per KV at a %d-token context, not counted above.\n",
      c_.name.c_str(), c_.head_dim, b, group, kv, kv, score_pos, fork_slot, table, fork_block, ours,
      100.0 * ours / kv, fork, 100.0 * fork / kv, 8.0 / o_.overhead_context, o_.overhead_context);
  report_->Json({{"mode", "metadata"},
                 {"block_size", b},
                 {"head_dim", c_.head_dim},
                 {"kv_bytes_per_kv", kv},
                 {"score_position_bytes_per_kv", score_pos},
                 {"table_bytes_per_kv", table},
                 {"metadata_pct", 100.0 * ours / kv},
                 {"fork_metadata_pct", 100.0 * fork / kv}});
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// GEMM sweep: the decode step's matmuls alone, cuBLASLt's first heuristic (what the executor used
// before it tuned) against the fastest of its top candidates, as bandwidth over the weight bytes.

struct GemmShape {
  const char* name;
  int64_t n_out;  // output features (rows of W)
  int64_t in;     // input features
  int64_t ldx;    // leading dimension of X (the executor's strides)
  bool out_f32;
  bool accumulate;
  int per_step;  // how many of it one decode step runs
};

absl::Status RunGemmSweep(const Options& o, const ModelConfig& c, const DeviceRates& rates,
                          Report* report) {
  const int64_t h = c.hidden_size, d = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q = static_cast<int64_t>(c.num_attention_heads) * d;
  const int64_t kv = static_cast<int64_t>(c.num_key_value_heads) * d;
  const int L = c.num_hidden_layers;
  const std::vector<GemmShape> shapes = {
      {"qkv", q + 2 * kv, h, h, false, false, L}, {"o", h, q, q, true, true, L},
      {"gate_up", 2 * I, h, h, false, false, L},  {"down", h, I, 2 * I, true, true, L},
      {"lm_head", V, h, h, true, false, 1},
  };
  int64_t max_w = 0, max_ldx = 0, max_out = 0;
  for (const GemmShape& s : shapes) {
    max_w = std::max(max_w, s.n_out * s.in);
    max_ldx = std::max(max_ldx, s.ldx);
    max_out = std::max(max_out, s.n_out);
  }
  int32_t max_rows = 1;
  for (int32_t b : o.batches) max_rows = std::max(max_rows, b);
  const size_t ws_bytes = size_t{32} << 20;
  cudaStream_t stream = nullptr;
  STEP_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  kernels::Bf16* w = nullptr;
  kernels::Bf16* x = nullptr;
  void* y = nullptr;
  void* ws = nullptr;
  STEP_CUDA(cudaMalloc(reinterpret_cast<void**>(&w), max_w * 2));
  STEP_CUDA(cudaMalloc(reinterpret_cast<void**>(&x), max_ldx * max_rows * 2));
  STEP_CUDA(cudaMalloc(&y, max_out * max_rows * 4));
  STEP_CUDA(cudaMemset(y, 0, max_out * max_rows * 4));
  STEP_CUDA(cudaMalloc(&ws, ws_bytes));
  for (auto [ptr, n, seed] :
       {std::tuple{w, max_w, 21ull}, std::tuple{x, max_ldx * max_rows, 22ull}}) {
    kernels::FillRandomParams fp;
    fp.data = ptr;
    fp.n = n;
    fp.seed = seed;
    fp.scale = 0.05f;
    RETURN_IF_ERROR(kernels::FillRandom(fp, stream));
  }
  cublasLtHandle_t lt = nullptr;
  STEP_CUBLAS(cublasLtCreate(&lt));
  std::printf(
      "\n## Decode-step GEMMs alone (cuBLASLt, bf16 weights, fp32 accumulate)\n\n"
      "GB/s = weight bytes / time (the floor reads each weight once per step); %% = of the copy "
      "bandwidth %.0f GB/s. 'first' = cuBLASLt's first heuristic (the executor's choice without "
      "KVC_GEMM_TUNE), 'best' = fastest of its top 16 (what the executor's tuning picks). Median "
      "of %d after 3 warm-ups.\n\n",
      rates.copy_gbs, std::max(o.iters, 10));
  std::printf(
      "| rows | gemm | n x k | first us | first GB/s | %% | best us | best GB/s | %% | best is # "
      "| candidates |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int32_t rows : o.batches) {
    double step_first = 0, step_best = 0, step_bytes = 0;
    for (const GemmShape& s : shapes) {
      cublasLtMatmulDesc_t desc = nullptr;
      cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
      cublasLtMatmulPreference_t pref = nullptr;
      STEP_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      STEP_CUBLAS(
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      STEP_CUBLAS(
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      STEP_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.in, s.n_out, s.in));
      STEP_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.in, rows, s.ldx));
      STEP_CUBLAS(cublasLtMatrixLayoutCreate(&ld, s.out_f32 ? CUDA_R_32F : CUDA_R_16BF, s.n_out,
                                             rows, s.n_out));
      STEP_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
      STEP_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
      cublasLtMatmulHeuristicResult_t results[16];
      int found = 0;
      STEP_CUBLAS(
          cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 16, results, &found));
      const float alpha = 1.0f, beta = s.accumulate ? 1.0f : 0.0f;
      std::vector<double> times;
      for (int i = 0; i < found; ++i) {
        absl::StatusOr<double> ms =
            TimeEventsMs(stream, 3, std::max(o.iters, 10), [&]() -> absl::Status {
              STEP_CUBLAS(cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, ld, y, ld,
                                         &results[i].algo, ws, ws_bytes, stream));
              return absl::OkStatus();
            });
        times.push_back(ms.ok() ? *ms : 1e30);  // an algorithm that fails to run is never best
      }
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(ld);
      cublasLtMatmulDescDestroy(desc);
      if (found == 0 || times[0] >= 1e30) {
        return absl::InternalError(absl::StrCat("GEMM sweep: no runnable algorithm for ", s.name));
      }
      const int best =
          static_cast<int>(std::min_element(times.begin(), times.end()) - times.begin());
      const double bytes = 2.0 * s.n_out * s.in;
      const auto gbs = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
      std::printf(
          "| %d | %s | %lld x %lld | %.1f | %.0f | %.0f%% | %.1f | %.0f | %.0f%% | %d | %d |\n",
          rows, s.name, static_cast<long long>(s.n_out), static_cast<long long>(s.in),
          times[0] * 1e3, gbs(times[0]), 100.0 * gbs(times[0]) / rates.copy_gbs, times[best] * 1e3,
          gbs(times[best]), 100.0 * gbs(times[best]) / rates.copy_gbs, best, found);
      step_first += s.per_step * times[0];
      step_best += s.per_step * times[best];
      step_bytes += s.per_step * bytes;
      report->Json({{"mode", "gemm"},
                    {"rows", rows},
                    {"gemm", s.name},
                    {"n_out", s.n_out},
                    {"k", s.in},
                    {"first_ms", times[0]},
                    {"best_ms", times[best]},
                    {"best_index", best},
                    {"candidates", found}});
    }
    const double floor_ms = step_bytes / (rates.copy_gbs * 1e9) * 1e3;
    std::printf(
        "| %d | **all of a step** | | %.2f ms | %.0f | %.0f%% | %.2f ms | %.0f | %.0f%% | | |\n",
        rows, step_first, step_bytes / (step_first * 1e-3) / 1e9, 100.0 * floor_ms / step_first,
        step_best, step_bytes / (step_best * 1e-3) / 1e9, 100.0 * floor_ms / step_best);
    report->Json({{"mode", "gemm_step"},
                  {"rows", rows},
                  {"first_ms", step_first},
                  {"best_ms", step_best},
                  {"weight_floor_ms", floor_ms}});
  }
  std::fflush(stdout);
  cublasLtDestroy(lt);
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  cudaFree(ws);
  cudaStreamDestroy(stream);
  return absl::OkStatus();
}

absl::Status Run(const Options& o) {
  ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromJsonFile(o.config));
  c.name = std::filesystem::path(o.config).stem().string();  // "llama-3.1-8b", not the folder
  Report report(o.json);
  std::printf("# kvc-bench-step\n\nconfig: %s (%s)\n", o.config.c_str(), c.DebugString().c_str());
  if (o.mode == "metadata") {
    report.set_device("none");
    StepBench bench(o, c, DeviceRates{}, &report);
    bench.PrintMetadata();
    return absl::OkStatus();
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError("no CUDA device");
  }
  STEP_CUDA(cudaSetDevice(0));
  ASSIGN_OR_RETURN(DeviceRates rates, MeasureDevice(o.iters));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf(
      "device: %s, %d SMs, %.1f GiB, CUDA driver %d / runtime %d; cudaMemcpy D2D %.0f GB/s "
      "(read + write, 1 GiB); cuBLASLt bf16 GEMM 8192^3 %.0f TFLOP/s\n",
      rates.name.c_str(), rates.sms, rates.total_gib, driver, runtime, rates.copy_gbs,
      rates.gemm_tflops);
  report.set_device(rates.name);
  report.Json({{"mode", "device"},
               {"sms", rates.sms},
               {"total_gib", rates.total_gib},
               {"copy_gbs", rates.copy_gbs},
               {"gemm_tflops", rates.gemm_tflops},
               {"config", o.config},
               {"iters", o.iters}});
  StepBench bench(o, c, rates, &report);
  if (o.Runs("gemm")) RETURN_IF_ERROR(RunGemmSweep(o, c, rates, &report));
  if (o.mode == "gemm") return absl::OkStatus();
  RETURN_IF_ERROR(bench.CreateExecutor());
  if (o.Runs("decode")) RETURN_IF_ERROR(bench.RunDecode());
  if (o.Runs("prefill")) RETURN_IF_ERROR(bench.RunPrefill());
  if (o.Runs("overhead")) RETURN_IF_ERROR(bench.RunOverhead());
  if (o.Runs("overhead")) bench.PrintMetadata();
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  absl::StatusOr<kvc::Options> o = kvc::ParseOptions(argc, argv);
  if (!o.ok()) {
    if (absl::IsCancelled(o.status())) {
      std::fputs(kvc::kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "%s\n%s", o.status().ToString().c_str(), kvc::kUsage);
    return 2;
  }
  const absl::Status s = kvc::Run(*o);
  if (!s.ok()) {
    std::fprintf(stderr, "kvc-bench-step: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
