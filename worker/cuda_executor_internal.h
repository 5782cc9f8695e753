// Internals of CudaExecutor shared by its translation units (cuda_executor.cc: setup, Forward,
// MoveKvs; cuda_executor_*.cc: the parts added beside it). Not a public header: only the CUDA
// executor's own sources include it.
//
// Ownership: CudaExecutor owns one State; State owns every device buffer, the stream and the
// cuBLASLt handle. Grow-only buffers are grown only while the stream is idle.
#ifndef KVC_WORKER_CUDA_EXECUTOR_INTERNAL_H_
#define KVC_WORKER_CUDA_EXECUTOR_INTERNAL_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/include/kvc/kernels/bf16.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "kernels/include/kvc/kernels/executor_ops.h"
#include "kvmanager/eviction_plan.h"
#include "kvmanager/kv_layout.h"
#include "worker/cuda_executor.h"

namespace kvc {
namespace cuda_internal {

using kernels::Bf16;
using kernels::FloatToBf16;

inline absl::Status CudaError(cudaError_t err, const std::string& what) {
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
  const std::string msg = absl::StrCat(what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (err == cudaErrorNoDevice || err == cudaErrorInvalidDevice ||
      err == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

inline absl::Status CublasError(cublasStatus_t st, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": cuBLASLt status ", static_cast<int>(st));
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

#define KVC_CUDA_RETURN_IF_ERROR(expr, what)                         \
  do {                                                               \
    const cudaError_t kvc_cuda_err_ = (expr);                        \
    if (kvc_cuda_err_ != cudaSuccess)                                \
      return ::kvc::cuda_internal::CudaError(kvc_cuda_err_, (what)); \
  } while (0)

#define KVC_CUBLAS_RETURN_IF_ERROR(expr, what)                          \
  do {                                                                  \
    const cublasStatus_t kvc_cublas_st_ = (expr);                       \
    if (kvc_cublas_st_ != CUBLAS_STATUS_SUCCESS)                        \
      return ::kvc::cuda_internal::CublasError(kvc_cublas_st_, (what)); \
  } while (0)

// Grow-only device buffer (cudaMalloc: 256-byte aligned). Growing frees the old buffer: callers
// grow only while the stream is idle.
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DevBuf() { Free(); }
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  absl::Status Reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    Free();
    void* p = nullptr;
    KVC_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes),
                             absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what));
    ptr_ = p;
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Upload(const std::vector<T>& host, const char* what) {
    RETURN_IF_ERROR(Reserve(std::max<size_t>(host.size() * sizeof(T), 1), what));
    if (host.empty()) return absl::OkStatus();
    KVC_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
        absl::StrCat("upload of ", what));
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Grow-only pinned host buffer.
class PinnedBuf {
 public:
  PinnedBuf() = default;
  PinnedBuf(const PinnedBuf&) = delete;
  PinnedBuf& operator=(const PinnedBuf&) = delete;
  ~PinnedBuf() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  absl::Status Reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    void* p = nullptr;
    KVC_CUDA_RETURN_IF_ERROR(cudaMallocHost(&p, bytes),
                             absl::StrCat("cudaMallocHost of ", bytes, " bytes for ", what));
    ptr_ = p;
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline std::vector<Bf16> ToBf16(const std::vector<float>& v) {
  std::vector<Bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FloatToBf16(v[i]);
  return out;
}

// Kernel head dim for a model head dim (0 = unsupported).
inline int32_t StorageHeadDim(int32_t d) {
  if (d <= 0 || d % 2 != 0) return 0;
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  return 0;
}

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Reads scores and positions from the device. Prefetch(tables) gathers all blocks of a sequence
// with one kernel and one copy into a host cache that ReadBlock then serves; other reads are one
// synchronous copy each. The executor calls Invalidate() whenever the storage changes.
class DeviceSlotReader final : public KvSlotReader {
 public:
  DeviceSlotReader() = default;
  void Init(const kernels::PagedKvCache& cache, int device) {
    cache_ = cache;
    device_ = device;
  }
  void Invalidate() { index_.clear(); }
  float Score(int32_t block, int32_t offset) const override {
    float v = std::numeric_limits<float>::quiet_NaN();
    int32_t p = -1;
    if (!InRange(block, offset, 1)) return v;
    if (Cached(block, offset, 1, &v, &p)) return v;
    Copy(&v, cache_.scores + Index(block, offset), sizeof(float));
    return v;
  }
  int32_t Position(int32_t block, int32_t offset) const override {
    float s = 0;
    int32_t v = -1;
    if (!InRange(block, offset, 1)) return v;
    if (Cached(block, offset, 1, &s, &v)) return v;
    Copy(&v, cache_.positions + Index(block, offset), sizeof(int32_t));
    return v;
  }
  void ReadBlock(int32_t block, int32_t count, float* scores, int32_t* positions) const override {
    if (count <= 0) return;
    if (!InRange(block, 0, count)) {
      for (int32_t i = 0; i < count; ++i) {
        scores[i] = std::numeric_limits<float>::quiet_NaN();
        positions[i] = -1;
      }
      return;
    }
    if (Cached(block, 0, count, scores, positions)) return;
    Copy(scores, cache_.scores + Index(block, 0), sizeof(float) * count);
    Copy(positions, cache_.positions + Index(block, 0), sizeof(int32_t) * count);
  }
  void Prefetch(const SequenceBlockTables& tables) const override {
    index_.clear();
    blocks_.clear();
    for (const HeadBlockTable& t : tables.heads) {
      for (int32_t b : t.blocks) {
        if (b >= 0 && b < cache_.num_blocks && index_.emplace(b, blocks_.size()).second) {
          blocks_.push_back(b);
        }
      }
    }
    if (blocks_.empty()) return;
    const size_t n = blocks_.size(), bs = static_cast<size_t>(cache_.block_size);
    cudaSetDevice(device_);
    absl::Status st = d_blocks_.Reserve(n * sizeof(int32_t), "prefetch block list");
    if (st.ok()) st = d_scores_.Reserve(n * bs * sizeof(float), "prefetch scores");
    if (st.ok()) st = d_positions_.Reserve(n * bs * sizeof(int32_t), "prefetch positions");
    host_scores_.resize(n * bs);
    host_positions_.resize(n * bs);
    cudaError_t err = cudaSuccess;
    if (st.ok()) {
      err = cudaMemcpy(d_blocks_.as<void>(), blocks_.data(), n * sizeof(int32_t),
                       cudaMemcpyHostToDevice);
    }
    if (st.ok() && err == cudaSuccess) {
      kernels::GatherSlotMetaParams gp;
      gp.cache = cache_;
      gp.blocks = d_blocks_.as<int32_t>();
      gp.num_blocks = static_cast<int32_t>(n);
      gp.out_scores = d_scores_.as<float>();
      gp.out_positions = d_positions_.as<int32_t>();
      st = kernels::GatherSlotMeta(gp, kernels::StreamHandle{});
    }
    if (st.ok() && err == cudaSuccess) {
      err = cudaMemcpy(host_scores_.data(), d_scores_.as<void>(), n * bs * sizeof(float),
                       cudaMemcpyDeviceToHost);
    }
    if (st.ok() && err == cudaSuccess) {
      err = cudaMemcpy(host_positions_.data(), d_positions_.as<void>(), n * bs * sizeof(int32_t),
                       cudaMemcpyDeviceToHost);
    }
    if (!st.ok() || err != cudaSuccess) {
      // No cache: reads fall back to one copy per block.
      KVC_LOG(WARNING) << "CudaExecutor slot reader prefetch failed: "
                       << (st.ok() ? std::string(cudaGetErrorString(err)) : st.ToString());
      cudaGetLastError();
      index_.clear();
    }
  }

 private:
  bool InRange(int32_t block, int32_t offset, int32_t count) const {
    return block >= 0 && block < cache_.num_blocks && offset >= 0 &&
           offset + count <= cache_.block_size;
  }
  int64_t Index(int32_t block, int32_t offset) const {
    return static_cast<int64_t>(block) * cache_.block_size + offset;
  }
  bool Cached(int32_t block, int32_t offset, int32_t count, float* scores,
              int32_t* positions) const {
    auto it = index_.find(block);
    if (it == index_.end()) return false;
    const size_t at = it->second * static_cast<size_t>(cache_.block_size) + offset;
    std::memcpy(scores, host_scores_.data() + at, sizeof(float) * count);
    std::memcpy(positions, host_positions_.data() + at, sizeof(int32_t) * count);
    return true;
  }
  void Copy(void* dst, const void* src, size_t bytes) const {
    cudaSetDevice(device_);
    const cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) {
      // The interface has no status: report and leave NaN scores (never evicted).
      KVC_LOG(ERROR) << "CudaExecutor slot reader: " << cudaGetErrorString(err);
      std::memset(dst, 0xff, bytes);
    }
  }

  kernels::PagedKvCache cache_;
  int device_ = 0;
  // Prefetch cache: block id -> row in host_scores_ / host_positions_.
  mutable std::unordered_map<int32_t, size_t> index_;
  mutable std::vector<int32_t> blocks_;
  mutable std::vector<float> host_scores_;
  mutable std::vector<int32_t> host_positions_;
  mutable DevBuf d_blocks_, d_scores_, d_positions_;
};

// A cached cuBLASLt matmul of one shape: Y[n, m] (ld ldy) = X[n, k] (ld ldx) . W[m, k]^T (+ b).
// Decode-sized plans (few rows) are tuned once, outside any graph capture: the candidates are
// cuBLASLt's top heuristics, timed on the plan's own operands into a scratch output.
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::vector<cublasLtMatmulAlgo_t> candidates;  // heuristic order; empty once tuned
  const void* w = nullptr;                       // operands of the first call, for tuning
  const void* x = nullptr;
  int64_t out_bytes = 0;  // bytes of D (the tuning scratch must hold them)
  bool accumulate = false;
  ~GemmPlan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

using GemmKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool>;

}  // namespace cuda_internal

using cuda_internal::DevBuf;
using cuda_internal::DeviceSlotReader;
using cuda_internal::GemmKey;
using cuda_internal::GemmPlan;
using cuda_internal::PinnedBuf;
using kernels::Bf16;

struct CudaExecutor::State {
  ModelConfig config;
  KvLayout layout;
  int device = 0;
  int32_t sms = 0;
  int32_t d = 0, kd = 0, hq = 0, hkv = 0, hidden = 0, im = 0, imp = 0, vocab = 0, qkv_w = 0;
  float scale = 0;

  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  static constexpr size_t kLtWorkspaceBytes = 32u << 20;
  DevBuf lt_ws;
  std::map<GemmKey, std::unique_ptr<GemmPlan>> gemm_plans;
  // GEMM tuning (KVC_GEMM_TUNE=0 turns it off): plans of at most kTuneMaxRows rows wait here
  // until TuneGemms() times their candidates after the step that created them.
  static constexpr int64_t kTuneMaxRows = 256;
  bool gemm_tune = true;
  std::vector<GemmPlan*> gemm_tune_pending;
  DevBuf tune_out;
  int64_t gemms_tuned = 0, gemms_retuned_better = 0;
  int64_t host_prep_ns = 0, sync_wait_ns = 0;  // Forward: before the first launch / in the sync
  absl::Status TuneGemms();

  struct Layer {
    DevBuf input_norm, post_norm, qkv, qkv_bias, o, o_bias, gate_up, gate_up_bias, down, down_bias;
    bool has_qkv_bias = false, has_o_bias = false, has_mlp_bias = false;
  };
  std::vector<Layer> layers;
  DevBuf embed, final_norm, lm_head, inv_freq;

  DevBuf k, v, scores, positions;
  DeviceSlotReader reader;

  // ---- Device mirror of the block tables (cuda_executor.cc, Forward) ----
  // An arena of `mirror_slots` slots x (L·H heads) x `mirror_cap` block ids; a sequence owns one
  // slot while it is mirrored. Each Forward uploads only what changed since the sequence's last
  // Forward (new tail blocks; a head whose list changed otherwise is re-uploaded), as (index,
  // value) pairs scattered on the device. `shadow` holds what the device holds.
  struct MirrorSeq {
    int32_t slot = -1;
    std::vector<std::vector<int32_t>> shadow;  // per head index
    uint64_t last_used = 0;
  };
  std::map<int64_t, MirrorSeq> mirror;
  std::vector<int32_t> free_slots;
  int32_t mirror_slots = 0, mirror_cap = 0;
  DevBuf mirror_blocks, patch;
  PinnedBuf patch_host;
  std::vector<int32_t> patch_pairs;
  uint64_t forward_calls = 0;
  int64_t mirror_limit_bytes = int64_t{1} << 30;  // larger arenas fall back to full uploads
  // Statistics (tests, benchmarks): block-id entries uploaded by the mirror / full uploads.
  int64_t mirror_entries_uploaded = 0, full_table_uploads = 0;

  // ---- CUDA graphs of decode-only steps (cuda_executor.cc) ----
  // Keyed by the step's shape and the addresses of every buffer the launches use (a reallocated
  // buffer changes the key; stale graphs age out of the LRU cache).
  bool use_graphs = true;
  // Sampling and KV-Compress selection on the device (env KVC_DEVICE_SAMPLING=0 /
  // KVC_DEVICE_EVICTION=0 turn them off: samples_tokens() / evicts_on_device() return false).
  bool device_sampling = true;
  bool device_eviction = true;
  struct GraphEntry {
    cudaGraphExec_t exec = nullptr;
    uint64_t last_used = 0;
  };
  std::map<std::vector<int64_t>, GraphEntry> graphs;
  int64_t graph_launches = 0, graph_captures = 0;
  void ClearGraphs() {
    for (auto& [k, g] : graphs) {
      if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
    }
    graphs.clear();
  }

  // Brings the mirror up to date for every sequence of `batch` (a slot each, changed entries
  // uploaded). false: the arena would exceed mirror_limit_bytes; the caller uploads whole tables.
  absl::StatusOr<bool> UpdateMirror(const ForwardBatch& batch, const std::vector<int32_t>& order);
  // Drops a sequence's mirror slot (ForgetSequence).
  void ForgetMirror(int64_t seq_id);

  // ---- Sampling in Forward (cuda_executor_sampling.cc) ----
  // PrepareSampling decides, per Forward, whether the sequences' `sample` requests run on the
  // device (sample_rows > 0: per-row parameters uploaded, EnqueueSampling launches the kernel on
  // the logits, DownloadSampledTokens queues the copy of the tokens) or on the host from the
  // downloaded logits (sample_on_host). FinishSampledTokens fills ForwardOutput::tokens.
  int32_t sample_rows = 0;
  bool sample_on_host = false;
  DevBuf sample_dev;  // per-row parameters, then the sampled tokens
  PinnedBuf sample_host;
  absl::Status PrepareSampling(const ForwardBatch& batch, const std::vector<int32_t>& row_of_seq);
  absl::Status EnqueueSampling(int32_t logits_rows);
  absl::Status DownloadSampledTokens();
  absl::Status FinishSampledTokens(const ForwardBatch& batch,
                                   const std::vector<int32_t>& row_of_seq, ForwardOutput* out);

  // Scratch (grown per Forward while the stream is idle).
  DevBuf res, normed, qkv_act, attn, mlp, lse, g_res, lnin, logits, ws, meta, moves;
  PinnedBuf meta_host, logits_host, moves_host;
  size_t rows_cap = 0, out_cap = 0;

  ~State() {
    ClearGraphs();
    gemm_plans.clear();
    if (lt != nullptr) cublasLtDestroy(lt);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  kernels::StreamHandle handle() const { return reinterpret_cast<kernels::StreamHandle>(stream); }

  kernels::PagedKvCache Cache() const {
    kernels::PagedKvCache c;
    c.k = k.as<Bf16>();
    c.v = v.as<Bf16>();
    c.scores = scores.as<float>();
    c.positions = positions.as<int32_t>();
    c.num_blocks = layout.num_blocks;
    c.block_size = layout.block_size;
    c.head_dim = kd;
    return c;
  }

  // Padded position of real element r of a head.
  int32_t Pad(int32_t r) const { return r < d / 2 ? r : kd / 2 + (r - d / 2); }

  // Y[rows, n_out] (ld ldy) = X[rows, in] (ld ldx) . W[n_out, in]^T (+ bias, bf16 output only);
  // out_f32: Y is fp32, and with `accumulate` Y += X . W^T (the fp32 residual stream).
  absl::Status Gemm(const void* x, int64_t ldx, int64_t in, const DevBuf& w, const DevBuf* bias,
                    int64_t n_out, void* y_out, int64_t ldy, int64_t rows, bool out_f32,
                    bool accumulate = false);

  // ---- Device-side KV-Compress eviction (cuda_executor_eviction.cc) ----
  // evict_tables: one sequence's table offsets, counts and block ids, then the per-head counts k
  // and the error word written back; evict_ws: the kernels' workspace; evict_host: the pinned
  // staging of both copies.
  DevBuf evict_ws, evict_tables;
  PinnedBuf evict_host;
};

}  // namespace kvc

#endif  // KVC_WORKER_CUDA_EXECUTOR_INTERNAL_H_
