#include "worker/cuda_executor.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/include/kvc/kernels/bf16.h"
#include "kernels/include/kvc/kernels/cuda_kernels.h"
#include "kernels/include/kvc/kernels/executor_ops.h"
#include "worker/cuda_executor_internal.h"

namespace kvc {

using namespace cuda_internal;  // NOLINT(build/namespaces): this file's own internals

absl::Status CudaExecutor::State::Gemm(const void* x, int64_t ldx, int64_t in, const DevBuf& w,
                                       const DevBuf* bias, int64_t n_out, void* y_out, int64_t ldy,
                                       int64_t rows, bool out_f32, bool accumulate) {
  if (rows == 0) return absl::OkStatus();
  if (bias != nullptr && out_f32) {
    return absl::InternalError("Gemm: a bias epilogue is only used with bf16 outputs");
  }
  const GemmKey key{n_out, rows, in, ldx, ldy, out_f32, bias != nullptr, accumulate};
  auto it = gemm_plans.find(key);
  if (it == gemm_plans.end()) {
    if (gemm_plans.size() > 4096) {  // many distinct prefill lengths
      gemm_plans.clear();
      gemm_tune_pending.clear();
    }
    auto plan = std::make_unique<GemmPlan>();
    KVC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        "cublasLtMatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    KVC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
        "TRANSA");
    KVC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
        "TRANSB");
    if (bias != nullptr) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      KVC_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
                                     plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
                                 "EPILOGUE");
      const void* bp = bias->as<void>();
      KVC_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp,
                                         sizeof(bp)),
          "BIAS_POINTER");
    }
    // Column-major view: A = W as [k, m] (ld k), op(A) = W; B = X as [k, n] (ld ldx);
    // D = Y^T as [m, n] (ld ldy).
    KVC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, in, n_out, in),
                               "layout A");
    KVC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, in, rows, ldx),
                               "layout B");
    KVC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatrixLayoutCreate(&plan->d, out_f32 ? CUDA_R_32F : CUDA_R_16BF, n_out, rows, ldy),
        "layout D");
    cublasLtMatmulPreference_t pref = nullptr;
    KVC_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const size_t ws_bytes = kLtWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                         sizeof(ws_bytes));
    const bool tune = gemm_tune && rows <= kTuneMaxRows;
    cublasLtMatmulHeuristicResult_t results[16];
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
        lt, plan->desc, plan->a, plan->b, plan->d, plan->d, pref, tune ? 16 : 1, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    KVC_CUBLAS_RETURN_IF_ERROR(st, "cublasLtMatmulAlgoGetHeuristic");
    if (found == 0) {
      return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for a GEMM of m ", n_out,
                                              " n ", rows, " k ", in));
    }
    plan->algo = results[0].algo;
    if (tune && found > 1) {
      for (int i = 0; i < found; ++i) plan->candidates.push_back(results[i].algo);
      plan->w = w.as<void>();
      plan->x = x;
      plan->out_bytes = ldy * rows * (out_f32 ? 4 : 2);
      plan->accumulate = accumulate;
      gemm_tune_pending.push_back(plan.get());
    }
    it = gemm_plans.emplace(key, std::move(plan)).first;
  }
  GemmPlan& p = *it->second;
  if (bias != nullptr) {
    const void* bp = bias->as<void>();
    KVC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)),
        "BIAS_POINTER");
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  KVC_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmul(lt, p.desc, &alpha, w.as<void>(), p.a, x, p.b, &beta, y_out, p.d, y_out, p.d,
                     &p.algo, lt_ws.as<void>(), kLtWorkspaceBytes, stream),
      absl::StrCat("cublasLtMatmul (m ", n_out, " n ", rows, " k ", in, ")"));
  return absl::OkStatus();
}

absl::Status CudaExecutor::State::TuneGemms() {
  if (gemm_tune_pending.empty()) return absl::OkStatus();
  int64_t need = 0;
  for (const GemmPlan* p : gemm_tune_pending) need = std::max(need, p->out_bytes);
  if (tune_out.bytes() < static_cast<size_t>(need)) {
    RETURN_IF_ERROR(tune_out.Reserve(need, "GEMM tuning output"));
    KVC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(tune_out.as<void>(), 0, need, stream),
                             "GEMM tuning output memset");
  }
  cudaEvent_t ev[2] = {nullptr, nullptr};
  KVC_CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev[0]), "cudaEventCreate");
  KVC_CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev[1]), "cudaEventCreate");
  absl::Status status;
  for (GemmPlan* p : gemm_tune_pending) {
    const float alpha = 1.0f, beta = p->accumulate ? 1.0f : 0.0f;
    float best_ms = 0;
    size_t best = 0;
    for (size_t i = 0; i < p->candidates.size() && status.ok(); ++i) {
      const cublasLtMatmulAlgo_t& algo = p->candidates[i];
      auto launch = [&] {
        return cublasLtMatmul(lt, p->desc, &alpha, p->w, p->a, p->x, p->b, &beta,
                              tune_out.as<void>(), p->d, tune_out.as<void>(), p->d, &algo,
                              lt_ws.as<void>(), kLtWorkspaceBytes, stream);
      };
      if (launch() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that cannot run loses
      cudaEventRecord(ev[0], stream);
      constexpr int kReps = 5;
      bool ok = true;
      for (int r = 0; r < kReps; ++r) ok = ok && launch() == CUBLAS_STATUS_SUCCESS;
      cudaEventRecord(ev[1], stream);
      const cudaError_t e = cudaEventSynchronize(ev[1]);
      if (e != cudaSuccess) {
        status = ::kvc::cuda_internal::CudaError(e, "GEMM tuning");
        break;
      }
      float ms = 0;
      cudaEventElapsedTime(&ms, ev[0], ev[1]);
      if (ok && (best_ms == 0 || ms < best_ms)) {
        best_ms = ms;
        best = i;
      }
    }
    if (!status.ok()) break;
    p->algo = p->candidates[best];
    p->candidates.clear();
    p->candidates.shrink_to_fit();
    ++gemms_tuned;
    if (best != 0) ++gemms_retuned_better;
  }
  cudaEventDestroy(ev[0]);
  cudaEventDestroy(ev[1]);
  gemm_tune_pending.clear();
  return status;
}

int64_t CudaExecutor::BytesPerBlock(const ModelConfig& config, int32_t block_size) {
  const int64_t kd = std::max<int32_t>(StorageHeadDim(config.head_dim), 64);
  return static_cast<int64_t>(block_size) * (2 * kd * 2 + 4 + 4);
}

CudaExecutor::CudaExecutor(std::unique_ptr<State> state) : s_(std::move(state)) {}
CudaExecutor::~CudaExecutor() {
  if (s_ != nullptr) {
    cudaSetDevice(s_->device);
    if (s_->stream != nullptr) cudaStreamSynchronize(s_->stream);
  }
}

const ModelConfig& CudaExecutor::config() const { return s_->config; }
const KvLayout& CudaExecutor::layout() const { return s_->layout; }
const KvSlotReader& CudaExecutor::slot_reader() const { return s_->reader; }
int32_t CudaExecutor::storage_head_dim() const { return s_->kd; }

namespace {

// Validates the model and pool against what the kernels support and sets up everything but the
// weights: dimensions, stream, cuBLASLt, RoPE frequencies, the zeroed KV pool.
absl::StatusOr<std::unique_ptr<CudaExecutor::State>> NewState(const ModelConfig& c,
                                                              int64_t num_blocks,
                                                              int32_t block_size, int device) {
  RETURN_IF_ERROR(Annotate(c.Validate(), "CudaExecutor: model config"));
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks must be >= 1, got ", num_blocks));
  }
  if (num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks ", num_blocks, " is too large"));
  }
  if (block_size != 8 && block_size != 16 && block_size != 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be 8, 16 or 32 on the CUDA backend, got ", block_size));
  }
  const int32_t kd = StorageHeadDim(c.head_dim);
  if (kd == 0) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: head_dim ", c.head_dim,
                                                   " is not supported (even, at most 128)"));
  }
  const int32_t group = c.num_attention_heads / c.num_key_value_heads;
  if (c.num_attention_heads % c.num_key_value_heads != 0 ||
      (group != 1 && group != 2 && group != 4 && group != 8)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaExecutor: GQA group size ", c.num_attention_heads, "/",
                     c.num_key_value_heads, " is not supported (1, 2, 4 or 8)"));
  }
  if (c.hidden_size % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaExecutor: hidden_size ", c.hidden_size, " must be a multiple of 8"));
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("CudaExecutor: no CUDA device ", device, " (", count, " visible)"));
  }
  KVC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device), "cudaSetDevice");

  auto s = std::make_unique<CudaExecutor::State>();
  // Switches for measuring each fast path against the plain one (docs/perf-notes.md).
  auto off = [](const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && std::string(v) == "0";
  };
  if (off("KVC_CUDA_GRAPHS")) s->use_graphs = false;
  if (off("KVC_GEMM_TUNE")) s->gemm_tune = false;
  if (off("KVC_TABLE_MIRROR")) s->mirror_limit_bytes = 0;
  if (off("KVC_DEVICE_SAMPLING")) s->device_sampling = false;
  if (off("KVC_DEVICE_EVICTION")) s->device_eviction = false;
  s->config = c;
  s->device = device;
  s->sms = kernels::CurrentDeviceSmCount();
  s->d = c.head_dim;
  s->kd = kd;
  s->hq = c.num_attention_heads;
  s->hkv = c.num_key_value_heads;
  s->hidden = c.hidden_size;
  s->im = c.intermediate_size;
  s->imp = static_cast<int32_t>(RoundUp(c.intermediate_size, 8));
  s->vocab = c.vocab_size;
  s->qkv_w = (s->hq + 2 * s->hkv) * kd;
  s->scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  s->layout.num_layers = c.num_hidden_layers;
  s->layout.num_kv_heads = c.num_key_value_heads;
  s->layout.head_dim = c.head_dim;
  s->layout.block_size = block_size;
  s->layout.num_blocks = num_blocks;

  KVC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking),
                           "cudaStreamCreate");
  KVC_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&s->lt), "cublasLtCreate");
  RETURN_IF_ERROR(s->lt_ws.Reserve(CudaExecutor::State::kLtWorkspaceBytes, "cuBLASLt workspace"));

  std::vector<float> inv = RopeInvFreqFor(c, c.head_dim);
  inv.resize(s->kd / 2, 0.0f);  // padded pairs rotate zeros
  RETURN_IF_ERROR(s->inv_freq.Upload(inv, "rope inv_freq"));

  // ---- KV pool ----
  const int64_t slots = num_blocks * block_size;
  RETURN_IF_ERROR(s->k.Reserve(slots * s->kd * sizeof(Bf16), "K pool"));
  RETURN_IF_ERROR(s->v.Reserve(slots * s->kd * sizeof(Bf16), "V pool"));
  RETURN_IF_ERROR(s->scores.Reserve(slots * sizeof(float), "score pool"));
  RETURN_IF_ERROR(s->positions.Reserve(slots * sizeof(int32_t), "position pool"));
  // Zeroed: padded elements must be zero, and nothing reads an unwritten slot as NaN.
  KVC_CUDA_RETURN_IF_ERROR(cudaMemset(s->k.as<void>(), 0, slots * s->kd * sizeof(Bf16)),
                           "memset K");
  KVC_CUDA_RETURN_IF_ERROR(cudaMemset(s->v.as<void>(), 0, slots * s->kd * sizeof(Bf16)),
                           "memset V");
  KVC_CUDA_RETURN_IF_ERROR(cudaMemset(s->scores.as<void>(), 0, slots * sizeof(float)),
                           "memset scores");
  KVC_CUDA_RETURN_IF_ERROR(cudaMemset(s->positions.as<void>(), 0, slots * sizeof(int32_t)),
                           "memset positions");
  KVC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize(), "CudaExecutor setup");
  s->reader.Init(s->Cache(), device);
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(
    std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size,
    int device) {
  if (weights == nullptr) return absl::InvalidArgumentError("CudaExecutor: weights are null");
  const ModelConfig& c = weights->config;
  RETURN_IF_ERROR(Annotate(c.Validate(), "CudaExecutor: model config"));
  if (static_cast<int32_t>(weights->layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExecutor: weights hold ",
                                                   weights->layers.size(), " layers, config ",
                                                   c.num_hidden_layers));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<State> s, NewState(c, num_blocks, block_size, device));
  const int32_t kd = s->kd;
  // ---- weights: fp32 host -> padded bf16 device ----
  const int32_t d = s->d, hq = s->hq, hkv = s->hkv, h = s->hidden, im = s->im, imp = s->imp;
  const State& st = *s;
  for (int32_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights->layers[l];
    State::Layer L;
    RETURN_IF_ERROR(L.input_norm.Upload(ToBf16(lw.input_norm), "input_layernorm"));
    RETURN_IF_ERROR(L.post_norm.Upload(ToBf16(lw.post_norm), "post_attention_layernorm"));
    // Fused, padded QKV [(hq + 2 hkv) * kd, h]: q heads, then k heads, then v heads.
    std::vector<float> qkv(static_cast<size_t>(s->qkv_w) * h, 0.0f);
    std::vector<float> qkv_b(s->qkv_w, 0.0f);
    auto put_heads = [&](const std::vector<float>& wt, const std::vector<float>& b, int32_t heads,
                         int32_t first_row) {
      for (int32_t hd = 0; hd < heads; ++hd) {
        for (int32_t r = 0; r < d; ++r) {
          const int64_t src = static_cast<int64_t>(hd) * d + r;
          const int64_t dst = first_row + static_cast<int64_t>(hd) * kd + st.Pad(r);
          std::memcpy(&qkv[dst * h], &wt[src * h], sizeof(float) * h);
          if (!b.empty()) qkv_b[dst] = b[src];
        }
      }
    };
    put_heads(lw.q_proj, lw.q_bias, hq, 0);
    put_heads(lw.k_proj, lw.k_bias, hkv, hq * kd);
    put_heads(lw.v_proj, lw.v_bias, hkv, (hq + hkv) * kd);
    RETURN_IF_ERROR(L.qkv.Upload(ToBf16(qkv), "qkv_proj"));
    L.has_qkv_bias = !lw.q_bias.empty() || !lw.k_bias.empty() || !lw.v_bias.empty();
    if (L.has_qkv_bias) RETURN_IF_ERROR(L.qkv_bias.Upload(ToBf16(qkv_b), "qkv bias"));
    // o_proj [h, hq * kd], columns padded like the heads.
    std::vector<float> o(static_cast<size_t>(h) * hq * kd, 0.0f);
    for (int32_t row = 0; row < h; ++row) {
      for (int32_t hd = 0; hd < hq; ++hd) {
        for (int32_t r = 0; r < d; ++r) {
          o[static_cast<int64_t>(row) * hq * kd + hd * kd + st.Pad(r)] =
              lw.o_proj[static_cast<int64_t>(row) * hq * d + hd * d + r];
        }
      }
    }
    RETURN_IF_ERROR(L.o.Upload(ToBf16(o), "o_proj"));
    L.has_o_bias = !lw.o_bias.empty();
    if (L.has_o_bias) RETURN_IF_ERROR(L.o_bias.Upload(ToBf16(lw.o_bias), "o_proj bias"));
    // Fused gate/up [2 * imp, h] (zero rows im..imp of each half) and down [h, imp].
    std::vector<float> gu(static_cast<size_t>(2) * imp * h, 0.0f);
    std::memcpy(gu.data(), lw.gate_proj.data(), sizeof(float) * im * h);
    std::memcpy(gu.data() + static_cast<size_t>(imp) * h, lw.up_proj.data(),
                sizeof(float) * im * h);
    RETURN_IF_ERROR(L.gate_up.Upload(ToBf16(gu), "gate_up_proj"));
    std::vector<float> dn(static_cast<size_t>(h) * imp, 0.0f);
    for (int32_t row = 0; row < h; ++row) {
      std::memcpy(&dn[static_cast<size_t>(row) * imp], &lw.down_proj[static_cast<size_t>(row) * im],
                  sizeof(float) * im);
    }
    RETURN_IF_ERROR(L.down.Upload(ToBf16(dn), "down_proj"));
    L.has_mlp_bias = !lw.gate_bias.empty() || !lw.up_bias.empty() || !lw.down_bias.empty();
    if (L.has_mlp_bias) {
      std::vector<float> gub(2 * imp, 0.0f);
      for (int32_t i = 0; i < im; ++i) {
        if (!lw.gate_bias.empty()) gub[i] = lw.gate_bias[i];
        if (!lw.up_bias.empty()) gub[imp + i] = lw.up_bias[i];
      }
      RETURN_IF_ERROR(L.gate_up_bias.Upload(ToBf16(gub), "gate_up bias"));
      std::vector<float> db = lw.down_bias;
      db.resize(h, 0.0f);
      RETURN_IF_ERROR(L.down_bias.Upload(ToBf16(db), "down_proj bias"));
    }
    s->layers.push_back(std::move(L));
  }
  RETURN_IF_ERROR(s->embed.Upload(ToBf16(weights->embed_tokens), "embed_tokens"));
  RETURN_IF_ERROR(s->final_norm.Upload(ToBf16(weights->final_norm), "norm"));
  if (!c.tie_word_embeddings) {
    RETURN_IF_ERROR(s->lm_head.Upload(ToBf16(weights->lm_head), "lm_head"));
  }
  KVC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize(), "CudaExecutor weights upload");
  KVC_LOG(INFO) << "CudaExecutor: " << c.name << " on device " << device << " (" << s->sms
                << " SMs), head_dim " << c.head_dim << " (stored " << kd << "), " << num_blocks
                << " blocks of " << block_size;
  return std::unique_ptr<CudaExecutor>(new CudaExecutor(std::move(s)));
}

absl::StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::CreateRandom(
    const ModelConfig& c, uint64_t seed, int64_t num_blocks, int32_t block_size, int device) {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaExecutor::CreateRandom: head_dim must be 64 or 128 (no padding), got ", c.head_dim));
  }
  if (c.intermediate_size % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaExecutor::CreateRandom: intermediate_size must be a multiple of 8, got ",
                     c.intermediate_size));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<State> s, NewState(c, num_blocks, block_size, device));
  const int64_t h = s->hidden, imp = s->imp;
  uint64_t stream_id = 0;
  // Uniform weights of standard deviation 0.02 (scale 0.02 * sqrt(3)), norms 1 +- 0.1, biases
  // 0.02: activations stay O(1) through the layers, like a trained model's.
  auto fill = [&](DevBuf& buf, int64_t n, float scale, float offset,
                  const char* what) -> absl::Status {
    RETURN_IF_ERROR(buf.Reserve(static_cast<size_t>(n) * sizeof(Bf16), what));
    kernels::FillRandomBf16Params fp;
    fp.out = buf.as<Bf16>();
    fp.n = n;
    fp.scale = scale;
    fp.offset = offset;
    fp.seed = seed * 1000003ull + (++stream_id);
    return kernels::FillRandomBf16(fp, s->handle());
  };
  const float w = 0.02f * std::sqrt(3.0f);
  for (int32_t l = 0; l < c.num_hidden_layers; ++l) {
    State::Layer L;
    RETURN_IF_ERROR(fill(L.input_norm, h, 0.1f, 1.0f, "input_layernorm"));
    RETURN_IF_ERROR(fill(L.post_norm, h, 0.1f, 1.0f, "post_attention_layernorm"));
    RETURN_IF_ERROR(fill(L.qkv, static_cast<int64_t>(s->qkv_w) * h, w, 0, "qkv_proj"));
    if (c.qkv_bias()) {
      L.has_qkv_bias = true;
      RETURN_IF_ERROR(fill(L.qkv_bias, s->qkv_w, w, 0, "qkv bias"));
    }
    if (c.o_proj_bias()) {
      L.has_o_bias = true;
      RETURN_IF_ERROR(fill(L.o_bias, h, w, 0, "o_proj bias"));
    }
    RETURN_IF_ERROR(fill(L.o, h * s->hq * s->kd, w, 0, "o_proj"));
    RETURN_IF_ERROR(fill(L.gate_up, 2 * imp * h, w, 0, "gate_up_proj"));
    RETURN_IF_ERROR(fill(L.down, h * imp, w, 0, "down_proj"));
    s->layers.push_back(std::move(L));
  }
  RETURN_IF_ERROR(fill(s->embed, static_cast<int64_t>(s->vocab) * h, 1.0f, 0, "embed_tokens"));
  RETURN_IF_ERROR(fill(s->final_norm, h, 0.1f, 1.0f, "norm"));
  if (!c.tie_word_embeddings) {
    RETURN_IF_ERROR(fill(s->lm_head, static_cast<int64_t>(s->vocab) * h, w, 0, "lm_head"));
  }
  KVC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize(), "CudaExecutor random weights");
  KVC_LOG(INFO) << "CudaExecutor: " << c.name << " (random weights, seed " << seed << ") on device "
                << device << " (" << s->sms << " SMs), " << num_blocks << " blocks of "
                << block_size;
  return std::unique_ptr<CudaExecutor>(new CudaExecutor(std::move(s)));
}

namespace {

// A run of consecutive prefill-group sequences that share one window-score launch.
struct WindowRun {
  int32_t first = 0, count = 0, window = 0, pool = 0;
  std::vector<int32_t> max_kvs;  // per layer
};

}  // namespace

absl::Status CudaExecutor::Forward(const ForwardBatch& batch, ForwardOutput* out) {
  if (out == nullptr) return absl::InvalidArgumentError("Forward: out is null");
  State& s = *s_;
  const auto t_entry = std::chrono::steady_clock::now();
  // Block ids are range-checked here only when the mirror is off; with the mirror, UpdateMirror
  // checks exactly the entries it uploads (the rest were checked when they were uploaded).
  RETURN_IF_ERROR(ValidateForwardBatch(batch, s.config, s.layout,
                                       /*check_block_ids=*/s.mirror_limit_bytes <= 0));
  KVC_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device), "cudaSetDevice");
  s.reader.Invalidate();
  const int32_t L = s.config.num_hidden_layers, H = s.hkv, kd = s.kd, h = s.hidden;
  const size_t nb = batch.seqs.size();
  out->vocab_size = s.vocab;
  // out->logits is resized (not cleared) below: a vector of the same size is reused without
  // zero-filling it (131 MB per step at batch 256 with a 128k vocabulary).
  out->tokens.clear();
  if (nb == 0) return absl::OkStatus();

  // ---- internal order: P (prefill / pooled), D0 (decode), D1 (decode + scores) ----
  const int32_t pool_kernel = batch.score_pool_kernel > 1 ? batch.score_pool_kernel : 0;
  auto scored = [&](const ForwardSequence& f) {
    return std::min<int64_t>(f.score_queries, static_cast<int64_t>(f.tokens.size()));
  };
  auto pooled = [&](const ForwardSequence& f) {
    return scored(f) > 0 && f.score_pool && pool_kernel > 1;
  };
  std::vector<int32_t> P, D0, D1;
  for (size_t i = 0; i < nb; ++i) {
    const ForwardSequence& f = batch.seqs[i];
    if (f.tokens.size() > 1 || pooled(f)) {
      P.push_back(static_cast<int32_t>(i));
    } else if (scored(f) > 0) {
      D1.push_back(static_cast<int32_t>(i));
    } else {
      D0.push_back(static_cast<int32_t>(i));
    }
  }
  // Group P by window-score settings so each setting is one contiguous run.
  auto run_key = [&](int32_t i) {
    const ForwardSequence& f = batch.seqs[i];
    return std::make_pair(scored(f) > 0 ? f.score_queries : 0, pooled(f) ? 1 : 0);
  };
  std::stable_sort(P.begin(), P.end(),
                   [&](int32_t a, int32_t b) { return run_key(a) < run_key(b); });
  std::vector<int32_t> order = P;
  order.insert(order.end(), D0.begin(), D0.end());
  order.insert(order.end(), D1.begin(), D1.end());
  const int32_t S = static_cast<int32_t>(nb);
  const int32_t nP = static_cast<int32_t>(P.size()), nD0 = static_cast<int32_t>(D0.size()),
                nD1 = static_cast<int32_t>(D1.size());
  std::vector<int32_t> inv(nb);
  for (int32_t i = 0; i < S; ++i) inv[order[i]] = i;

  std::vector<int64_t> cu(S + 1, 0);
  for (int32_t i = 0; i < S; ++i) cu[i + 1] = cu[i] + batch.seqs[order[i]].tokens.size();
  if (cu[S] > std::numeric_limits<int32_t>::max() / 2) {
    return absl::InvalidArgumentError("Forward: too many tokens in one batch");
  }
  const int32_t T = static_cast<int32_t>(cu[S]);
  int32_t max_q_len = 0;
  for (int32_t i = 0; i < nP; ++i) {
    max_q_len = std::max<int32_t>(max_q_len, static_cast<int32_t>(cu[i + 1] - cu[i]));
  }
  // Rows that return logits, in batch order; out_rows_of_seq[b]: the logits row of sequence b's
  // last token (the one it samples from).
  std::vector<int32_t> out_rows, out_rows_of_seq(nb);
  for (size_t b = 0; b < nb; ++b) {
    const int32_t i = inv[b];
    if (batch.seqs[b].all_logits) {
      for (int64_t r = cu[i]; r < cu[i + 1]; ++r) out_rows.push_back(static_cast<int32_t>(r));
    } else {
      out_rows.push_back(static_cast<int32_t>(cu[i + 1] - 1));
    }
    out_rows_of_seq[b] = static_cast<int32_t>(out_rows.size()) - 1;
  }
  const int32_t O = static_cast<int32_t>(out_rows.size());

  // ---- block tables: the incremental device mirror, or a full upload when it does not fit ----
  ++s.forward_calls;
  ASSIGN_OR_RETURN(const bool mirrored, s.UpdateMirror(batch, order));
  const int32_t LH = L * H;
  int64_t total_blocks = 0;
  if (!mirrored) {
    ++s.full_table_uploads;
    for (int32_t i = 0; i < S; ++i) {
      for (const HeadBlockTable& t : batch.seqs[order[i]].tables->heads) {
        total_blocks += static_cast<int64_t>(t.blocks.size());
      }
    }
  }
  const int64_t n_heads = static_cast<int64_t>(L) * S * H;
  const int64_t off_ids = 0, off_pos = T, off_cu = 2 * static_cast<int64_t>(T),
                off_out = off_cu + S + 1, off_toff = off_out + O, off_nkv = off_toff + n_heads,
                off_blocks = off_nkv + n_heads, meta_n = off_blocks + total_blocks;
  if (meta_n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("Forward: batch block tables too large");
  }
  RETURN_IF_ERROR(s.meta_host.Reserve(meta_n * sizeof(int32_t), "batch metadata (host)"));
  RETURN_IF_ERROR(s.meta.Reserve(meta_n * sizeof(int32_t), "batch metadata"));
  int32_t* mh = s.meta_host.as<int32_t>();
  for (int32_t i = 0; i < S; ++i) {
    const ForwardSequence& f = batch.seqs[order[i]];
    for (size_t t = 0; t < f.tokens.size(); ++t) {
      mh[off_ids + cu[i] + t] = f.tokens[t];
      mh[off_pos + cu[i] + t] = f.start_position + static_cast<int32_t>(t);
    }
  }
  for (int32_t i = 0; i <= S; ++i) mh[off_cu + i] = static_cast<int32_t>(cu[i]);
  for (int32_t r = 0; r < O; ++r) mh[off_out + r] = out_rows[r];
  // Per layer: max num_kvs of all / P / D0 / D1 and of each window run.
  std::vector<int32_t> max_all(L, 0), max_p(L, 0), max_d0(L, 0), max_d1(L, 0);
  {
    int64_t at = 0;
    for (int32_t i = 0; i < S; ++i) {
      const SequenceBlockTables& st = *batch.seqs[order[i]].tables;
      const int64_t slot_base =
          mirrored ? static_cast<int64_t>(s.mirror.at(batch.seqs[order[i]].seq_id).slot) * LH *
                         s.mirror_cap
                   : 0;
      for (int32_t l = 0; l < L; ++l) {
        for (int32_t j = 0; j < H; ++j) {
          const int32_t head = s.layout.HeadIndex(l, j);
          const HeadBlockTable& t = st.heads[head];
          const int64_t hi = (static_cast<int64_t>(l) * S + i) * H + j;
          if (mirrored) {
            mh[off_toff + hi] =
                static_cast<int32_t>(slot_base + static_cast<int64_t>(head) * s.mirror_cap);
          } else {
            mh[off_toff + hi] = static_cast<int32_t>(at);
            std::memcpy(mh + off_blocks + at, t.blocks.data(), sizeof(int32_t) * t.blocks.size());
            at += static_cast<int64_t>(t.blocks.size());
          }
          mh[off_nkv + hi] = t.num_kvs;
          max_all[l] = std::max(max_all[l], t.num_kvs);
          int32_t& grp = i < nP ? max_p[l] : (i < nP + nD0 ? max_d0[l] : max_d1[l]);
          grp = std::max(grp, t.num_kvs);
        }
      }
    }
  }
  std::vector<WindowRun> runs;
  for (int32_t i = 0; i < nP;) {
    const auto key = run_key(order[i]);
    int32_t j = i;
    while (j < nP && run_key(order[j]) == key) ++j;
    if (key.first > 0) {
      WindowRun r;
      r.first = i;
      r.count = j - i;
      r.window = key.first;
      r.pool = key.second ? pool_kernel : 0;
      r.max_kvs.assign(L, 0);
      for (int32_t l = 0; l < L; ++l) {
        for (int32_t q = i; q < j; ++q) {
          for (int32_t hh = 0; hh < H; ++hh) {
            r.max_kvs[l] =
                std::max(r.max_kvs[l], mh[off_nkv + (static_cast<int64_t>(l) * S + q) * H + hh]);
          }
        }
      }
      runs.push_back(std::move(r));
    }
    i = j;
  }
  // A decode-only step over mirrored tables replays a CUDA graph captured for its shape: the
  // lengths and block ids it reads live in device arrays, and the host-side bounds (the decode
  // split plans and the tables' max_num_kvs) are rounded up to a power of two so that one graph
  // serves many steps.
  const bool graph_step = s.use_graphs && mirrored && nP == 0;
  if (graph_step) {
    auto bucket = [](const std::vector<int32_t>& m) {
      int32_t x = 16;
      for (int32_t v : m) {
        while (x < v) x *= 2;
      }
      return x;
    };
    const int32_t b0 = nD0 > 0 ? bucket(max_d0) : 0, b1 = nD1 > 0 ? bucket(max_d1) : 0;
    std::fill(max_d0.begin(), max_d0.end(), b0);
    std::fill(max_d1.begin(), max_d1.end(), b1);
    std::fill(max_all.begin(), max_all.end(), std::max(b0, b1));
  }
  // Decode plans and the shared attention workspace.
  std::vector<kernels::DecodeAttentionPlan> plan_d0(L), plan_d1(L);
  int64_t ws_bytes = 256;
  for (int32_t l = 0; l < L; ++l) {
    if (nD0 > 0) {
      plan_d0[l] =
          kernels::MakeDecodeAttentionPlan(nD0, H, s.hq, kd, std::max(max_d0[l], 1), s.sms, false);
      ws_bytes = std::max(ws_bytes, plan_d0[l].workspace_bytes);
    }
    if (nD1 > 0) {
      plan_d1[l] =
          kernels::MakeDecodeAttentionPlan(nD1, H, s.hq, kd, std::max(max_d1[l], 1), s.sms, true);
      ws_bytes = std::max(ws_bytes, plan_d1[l].workspace_bytes);
    }
    for (const WindowRun& r : runs) {
      ws_bytes =
          std::max(ws_bytes, kernels::WindowScoreWorkspaceBytes(r.count, H, s.hq, r.max_kvs[l]));
    }
  }

  // ---- scratch (the stream is idle here: the previous call synchronised) ----
  const size_t rows = static_cast<size_t>(T);
  auto bf = [](size_t n) { return n * sizeof(Bf16); };
  RETURN_IF_ERROR(s.res.Reserve(rows * h * sizeof(float), "residual"));
  RETURN_IF_ERROR(s.normed.Reserve(bf(rows * h), "normed"));
  RETURN_IF_ERROR(s.qkv_act.Reserve(bf(rows * s.qkv_w), "qkv"));
  RETURN_IF_ERROR(s.attn.Reserve(bf(rows * s.hq * kd), "attention output"));
  RETURN_IF_ERROR(s.mlp.Reserve(bf(rows * 2 * s.imp), "mlp"));
  RETURN_IF_ERROR(s.lse.Reserve(rows * s.hq * sizeof(float), "lse"));
  RETURN_IF_ERROR(s.g_res.Reserve(static_cast<size_t>(O) * h * sizeof(float), "gathered residual"));
  RETURN_IF_ERROR(s.lnin.Reserve(bf(static_cast<size_t>(O) * h), "final norm"));
  const size_t logits_bytes = static_cast<size_t>(O) * s.vocab * sizeof(float);
  RETURN_IF_ERROR(s.logits.Reserve(logits_bytes, "logits"));
  RETURN_IF_ERROR(s.ws.Reserve(static_cast<size_t>(ws_bytes), "attention workspace"));
  RETURN_IF_ERROR(s.PrepareSampling(batch, out_rows_of_seq));
  const bool want_logits = batch.return_logits || s.sample_on_host ||
                           std::any_of(batch.seqs.begin(), batch.seqs.end(),
                                       [](const ForwardSequence& f) { return f.all_logits; });
  if (!want_logits) out->logits.clear();
  if (want_logits) {
    RETURN_IF_ERROR(s.logits_host.Reserve(logits_bytes, "logits (host)"));
    try {
      if (out->logits.size() != static_cast<size_t>(O) * s.vocab) {
        out->logits.resize(static_cast<size_t>(O) * s.vocab);
      }
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Forward: cannot allocate ", O, " rows of logits"));
    }
  }

  cudaStream_t stream = s.stream;
  const kernels::StreamHandle sh = s.handle();
  KVC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.meta.as<void>(), mh, meta_n * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, stream),
                           "upload of batch metadata");
  const int32_t* d_meta = s.meta.as<int32_t>();
  const int32_t* d_ids = d_meta + off_ids;
  const int32_t* d_pos = d_meta + off_pos;
  const int32_t* d_cu = d_meta + off_cu;
  const int32_t* d_out = d_meta + off_out;
  const int32_t* d_toff = d_meta + off_toff;
  const int32_t* d_nkv = d_meta + off_nkv;
  const int32_t* d_blocks = mirrored ? s.mirror_blocks.as<int32_t>() : d_meta + off_blocks;

  float* res = s.res.as<float>();
  Bf16* normed = s.normed.as<Bf16>();
  Bf16* qkv = s.qkv_act.as<Bf16>();
  Bf16* attn = s.attn.as<Bf16>();
  Bf16* mlp = s.mlp.as<Bf16>();
  float* lse = s.lse.as<float>();
  const int64_t attn_w = static_cast<int64_t>(s.hq) * kd;
  const kernels::PagedKvCache cache = s.Cache();

  auto rms_norm = [&](const float* x, const DevBuf& weight, Bf16* o, int32_t nrows) {
    kernels::RmsNormF32Params np;
    np.rows = nrows;
    np.dim = h;
    np.eps = s.config.rms_norm_eps;
    np.x = x;
    np.weight = weight.as<Bf16>();
    np.out = o;
    return kernels::RmsNormF32(np, sh);
  };
  auto add_bias = [&](const DevBuf& bias) {
    kernels::AddBiasF32Params bp;
    bp.rows = T;
    bp.dim = h;
    bp.x = res;
    bp.bias = bias.as<Bf16>();
    return kernels::AddBiasF32(bp, sh);
  };
  auto tables = [&](int32_t l, int32_t first, int32_t count, int32_t max_kvs) {
    kernels::HeadTables t;
    t.block_ids = d_blocks;
    t.table_offsets = d_toff + (static_cast<int64_t>(l) * S + first) * H;
    t.num_kvs = d_nkv + (static_cast<int64_t>(l) * S + first) * H;
    t.num_seqs = count;
    t.num_kv_heads = H;
    t.max_num_kvs = max_kvs;
    return t;
  };

  // Everything from the embedding to the logits: launched directly, or captured into a graph.
  auto enqueue = [&]() -> absl::Status {
    // The residual stream stays fp32 (embedding rows widened; o_proj and down_proj accumulate
    // into it); only GEMM inputs are rounded to bf16.
    {
      kernels::GatherRowsF32Params gp;
      gp.rows = T;
      gp.dim = h;
      gp.src_bf16 = s.embed.as<Bf16>();
      gp.src_rows = s.vocab;
      gp.index = d_ids;
      gp.out = res;
      RETURN_IF_ERROR(kernels::GatherRowsF32(gp, sh));
    }
    for (int32_t l = 0; l < L; ++l) {
      const State::Layer& lw = s.layers[l];
      RETURN_IF_ERROR(rms_norm(res, lw.input_norm, normed, T));
      RETURN_IF_ERROR(s.Gemm(normed, h, h, lw.qkv, lw.has_qkv_bias ? &lw.qkv_bias : nullptr,
                             s.qkv_w, qkv, s.qkv_w, T, false));
      {
        kernels::RopeParams rp;
        rp.num_tokens = T;
        rp.num_heads = s.hq + H;
        rp.head_dim = kd;
        rp.x = qkv;
        rp.stride = s.qkv_w;
        rp.first_head_offset = 0;
        rp.positions = d_pos;
        rp.inv_freq = s.inv_freq.as<float>();
        RETURN_IF_ERROR(kernels::Rope(rp, sh));
      }
      {
        kernels::KvAppendParams ap;
        ap.cache = cache;
        ap.tables = tables(l, 0, S, max_all[l]);
        ap.num_tokens = T;
        ap.cu_tokens = d_cu;
        ap.token_positions = d_pos;
        ap.k = qkv + static_cast<int64_t>(s.hq) * kd;
        ap.k_stride = s.qkv_w;
        ap.v = qkv + static_cast<int64_t>(s.hq + H) * kd;
        ap.v_stride = s.qkv_w;
        RETURN_IF_ERROR(kernels::AppendKv(ap, sh));
      }
      if (nP > 0) {
        kernels::PrefillAttentionParams pp;
        pp.cache = cache;
        pp.tables = tables(l, 0, nP, max_p[l]);
        pp.num_q_heads = s.hq;
        pp.scale = s.scale;
        pp.num_tokens = static_cast<int32_t>(cu[nP]);
        pp.max_q_len = max_q_len;
        pp.cu_q = d_cu;
        pp.q_positions = d_pos;
        pp.q = qkv;
        pp.q_stride = s.qkv_w;
        pp.out = attn;
        pp.out_stride = attn_w;
        pp.lse = lse;
        RETURN_IF_ERROR(kernels::PrefillAttention(pp, sh));
        for (const WindowRun& r : runs) {
          kernels::WindowScoreParams wp;
          wp.cache = cache;
          wp.tables = tables(l, r.first, r.count, r.max_kvs[l]);
          wp.num_q_heads = s.hq;
          wp.scale = s.scale;
          wp.window = r.window;
          wp.pool_kernel = r.pool;
          wp.cu_q = d_cu + r.first;
          wp.q_positions = d_pos;
          wp.q = qkv;
          wp.q_stride = s.qkv_w;
          wp.lse = lse;
          wp.workspace = s.ws.as<void>();
          wp.workspace_bytes = static_cast<int64_t>(s.ws.bytes());
          RETURN_IF_ERROR(kernels::AccumulateWindowScores(wp, sh));
        }
      }
      auto decode = [&](int32_t first, int32_t count, int32_t max_kvs,
                        const kernels::DecodeAttentionPlan& plan, bool scores) {
        kernels::DecodeAttentionParams dp;
        dp.cache = cache;
        dp.tables = tables(l, first, count, max_kvs);
        dp.num_q_heads = s.hq;
        dp.scale = s.scale;
        dp.q = qkv + cu[first] * s.qkv_w;
        dp.q_stride = s.qkv_w;
        dp.out = attn + cu[first] * attn_w;
        dp.out_stride = attn_w;
        dp.accumulate_scores = scores;
        dp.num_splits = plan.num_splits;
        dp.chunk_size = plan.chunk_size;
        dp.workspace = s.ws.as<void>();
        dp.workspace_bytes = static_cast<int64_t>(s.ws.bytes());
        return kernels::DecodeAttention(dp, sh);
      };
      if (nD0 > 0) RETURN_IF_ERROR(decode(nP, nD0, max_d0[l], plan_d0[l], false));
      if (nD1 > 0) RETURN_IF_ERROR(decode(nP + nD0, nD1, max_d1[l], plan_d1[l], true));

      RETURN_IF_ERROR(s.Gemm(attn, attn_w, attn_w, lw.o, nullptr, h, res, h, T, true, true));
      if (lw.has_o_bias) RETURN_IF_ERROR(add_bias(lw.o_bias));
      RETURN_IF_ERROR(rms_norm(res, lw.post_norm, normed, T));
      RETURN_IF_ERROR(s.Gemm(normed, h, h, lw.gate_up, lw.has_mlp_bias ? &lw.gate_up_bias : nullptr,
                             2 * s.imp, mlp, 2 * s.imp, T, false));
      {
        kernels::SwiGluParams sp;
        sp.rows = T;
        sp.dim = s.imp;
        sp.gate = mlp;
        sp.gate_stride = 2 * s.imp;
        sp.up = mlp + s.imp;
        sp.up_stride = 2 * s.imp;
        sp.out = mlp;
        sp.out_stride = 2 * s.imp;
        RETURN_IF_ERROR(kernels::SwiGlu(sp, sh));
      }
      RETURN_IF_ERROR(s.Gemm(mlp, 2 * s.imp, s.imp, lw.down, nullptr, h, res, h, T, true, true));
      if (lw.has_mlp_bias) RETURN_IF_ERROR(add_bias(lw.down_bias));
    }

    // Final norm on the rows that return logits, then the LM head (fp32 out).
    {
      kernels::GatherRowsF32Params gp;
      gp.rows = O;
      gp.dim = h;
      gp.src_f32 = res;
      gp.src_rows = T;
      gp.index = d_out;
      gp.out = s.g_res.as<float>();
      RETURN_IF_ERROR(kernels::GatherRowsF32(gp, sh));
    }
    RETURN_IF_ERROR(rms_norm(s.g_res.as<float>(), s.final_norm, s.lnin.as<Bf16>(), O));
    const DevBuf& head = s.config.tie_word_embeddings ? s.embed : s.lm_head;
    RETURN_IF_ERROR(s.Gemm(s.lnin.as<Bf16>(), h, h, head, nullptr, s.vocab, s.logits.as<float>(),
                           s.vocab, O, true));
    return s.EnqueueSampling(O);
  };

  std::vector<int64_t> captured_key;  // set when this step captured a new graph
  const auto t_launch = std::chrono::steady_clock::now();
  s.host_prep_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(t_launch - t_entry).count();
  if (graph_step) {
    // The key: everything the captured launches depend on besides device-array contents.
    std::vector<int64_t> key = {S,
                                nD0,
                                nD1,
                                O,
                                T,
                                max_d0[0],
                                max_d1[0],
                                ws_bytes,
                                reinterpret_cast<int64_t>(d_meta),
                                reinterpret_cast<int64_t>(d_blocks),
                                reinterpret_cast<int64_t>(res),
                                reinterpret_cast<int64_t>(normed),
                                reinterpret_cast<int64_t>(qkv),
                                reinterpret_cast<int64_t>(attn),
                                reinterpret_cast<int64_t>(mlp),
                                reinterpret_cast<int64_t>(s.g_res.as<void>()),
                                reinterpret_cast<int64_t>(s.lnin.as<void>()),
                                reinterpret_cast<int64_t>(s.logits.as<void>()),
                                reinterpret_cast<int64_t>(s.ws.as<void>()),
                                s.sample_rows,
                                reinterpret_cast<int64_t>(s.sample_dev.as<void>())};
    auto it = s.graphs.find(key);
    if (it == s.graphs.end()) {
      captured_key = key;
      if (s.graphs.size() >= 64) {  // evict the least recently used graph
        auto lru = s.graphs.begin();
        for (auto g = s.graphs.begin(); g != s.graphs.end(); ++g) {
          if (g->second.last_used < lru->second.last_used) lru = g;
        }
        cudaGraphExecDestroy(lru->second.exec);
        s.graphs.erase(lru);
      }
      cudaGraph_t graph = nullptr;
      KVC_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                               "cudaStreamBeginCapture");
      const absl::Status enq = enqueue();
      const cudaError_t end = cudaStreamEndCapture(stream, &graph);
      if (!enq.ok()) {
        if (graph != nullptr) cudaGraphDestroy(graph);
        return enq;
      }
      KVC_CUDA_RETURN_IF_ERROR(end, "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      KVC_CUDA_RETURN_IF_ERROR(inst, "cudaGraphInstantiate");
      it = s.graphs.emplace(std::move(key), State::GraphEntry{exec, 0}).first;
      ++s.graph_captures;
    }
    it->second.last_used = s.forward_calls;
    KVC_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second.exec, stream), "cudaGraphLaunch");
    ++s.graph_launches;
  } else {
    RETURN_IF_ERROR(enqueue());
  }

  if (want_logits) {
    KVC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.logits_host.as<void>(), s.logits.as<void>(),
                                             logits_bytes, cudaMemcpyDeviceToHost, stream),
                             "logits download");
  }
  RETURN_IF_ERROR(s.DownloadSampledTokens());
  const auto t_sync = std::chrono::steady_clock::now();
  KVC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "Forward");
  s.sync_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now() - t_sync)
                        .count();
  if (want_logits) std::memcpy(out->logits.data(), s.logits_host.as<float>(), logits_bytes);
  RETURN_IF_ERROR(s.FinishSampledTokens(batch, out_rows_of_seq, out));
  if (!s.gemm_tune_pending.empty()) {
    // New decode-sized GEMM plans ran with cuBLASLt's first heuristic; time their candidates now
    // (never inside a capture) and drop a graph captured with the untuned algorithms, so that the
    // next step of this shape captures the tuned ones.
    RETURN_IF_ERROR(s.TuneGemms());
    if (!captured_key.empty()) {
      auto g = s.graphs.find(captured_key);
      if (g != s.graphs.end()) {
        cudaGraphExecDestroy(g->second.exec);
        s.graphs.erase(g);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> CudaExecutor::State::UpdateMirror(const ForwardBatch& batch,
                                                       const std::vector<int32_t>& order) {
  const int32_t LH = layout.heads_per_seq();
  const int32_t S = static_cast<int32_t>(order.size());
  if (mirror_limit_bytes <= 0) return false;
  int64_t need_cap = 1;
  for (const ForwardSequence& f : batch.seqs) {
    for (const HeadBlockTable& t : f.tables->heads) {
      need_cap = std::max<int64_t>(need_cap, static_cast<int64_t>(t.blocks.size()));
    }
  }
  auto arena_bytes = [&](int64_t slots, int64_t cap) {
    return slots * LH * cap * static_cast<int64_t>(sizeof(int32_t));
  };
  auto reset = [&](int32_t slots, int32_t cap) -> absl::Status {
    mirror.clear();
    free_slots.clear();
    mirror_blocks.Free();
    RETURN_IF_ERROR(mirror_blocks.Reserve(arena_bytes(slots, cap), "block-table mirror"));
    mirror_slots = slots;
    mirror_cap = cap;
    for (int32_t i = slots - 1; i >= 0; --i) free_slots.push_back(i);
    return absl::OkStatus();
  };
  if (need_cap > mirror_cap) {
    int64_t cap = 16;
    while (cap < need_cap) cap *= 2;
    const int64_t slots = std::max<int64_t>({mirror_slots, S, 8});
    if (arena_bytes(slots, cap) > mirror_limit_bytes ||
        slots * LH * cap > std::numeric_limits<int32_t>::max()) {
      return false;
    }
    RETURN_IF_ERROR(reset(static_cast<int32_t>(slots), static_cast<int32_t>(cap)));
  }
  // A slot for every sequence of the batch: free ones first, then the least recently used
  // sequences that are not in this batch, then a larger arena (contents copied over).
  std::vector<int64_t> in_batch;
  for (const ForwardSequence& f : batch.seqs) in_batch.push_back(f.seq_id);
  std::sort(in_batch.begin(), in_batch.end());
  for (const ForwardSequence& f : batch.seqs) {
    if (mirror.count(f.seq_id)) continue;
    if (free_slots.empty()) {
      auto victim = mirror.end();
      for (auto it = mirror.begin(); it != mirror.end(); ++it) {
        if (std::binary_search(in_batch.begin(), in_batch.end(), it->first)) continue;
        if (victim == mirror.end() || it->second.last_used < victim->second.last_used) victim = it;
      }
      if (victim != mirror.end()) {
        free_slots.push_back(victim->second.slot);
        mirror.erase(victim);
      }
    }
    if (free_slots.empty()) {
      const int64_t slots = std::max<int64_t>(2 * mirror_slots, 8);
      if (arena_bytes(slots, mirror_cap) > mirror_limit_bytes ||
          slots * LH * mirror_cap > std::numeric_limits<int32_t>::max()) {
        return false;
      }
      DevBuf bigger;
      RETURN_IF_ERROR(bigger.Reserve(arena_bytes(slots, mirror_cap), "block-table mirror"));
      KVC_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(bigger.as<void>(), mirror_blocks.as<void>(),
                          arena_bytes(mirror_slots, mirror_cap), cudaMemcpyDeviceToDevice, stream),
          "block-table mirror growth");
      KVC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "block-table mirror growth");
      mirror_blocks = std::move(bigger);
      for (int32_t i = static_cast<int32_t>(slots) - 1; i >= mirror_slots; --i) {
        free_slots.push_back(i);
      }
      mirror_slots = static_cast<int32_t>(slots);
    }
    MirrorSeq m;
    m.slot = free_slots.back();
    free_slots.pop_back();
    m.shadow.assign(LH, {});
    mirror.emplace(f.seq_id, std::move(m));
  }
  // Changed entries as (index, value) pairs. Between calls a head's list normally only grows or
  // shrinks at its tail (KvManager appends; eviction frees tail blocks); the first and the last
  // common entries are checked, and a head that changed otherwise is re-sent whole.
  std::vector<int32_t>& pairs = patch_pairs;
  pairs.clear();
  for (const ForwardSequence& f : batch.seqs) {
    MirrorSeq& m = mirror.at(f.seq_id);
    m.last_used = forward_calls;
    const int64_t base = static_cast<int64_t>(m.slot) * LH * mirror_cap;
    for (int32_t hd = 0; hd < LH; ++hd) {
      const std::vector<int32_t>& blocks = f.tables->heads[hd].blocks;
      std::vector<int32_t>& shadow = m.shadow[hd];
      const size_t common = std::min(blocks.size(), shadow.size());
      size_t from = common;
      if (common > 0 && (shadow[0] != blocks[0] || shadow[common - 1] != blocks[common - 1])) {
        from = 0;
      }
      for (size_t k = from; k < blocks.size(); ++k) {
        if (blocks[k] < 0 || blocks[k] >= layout.num_blocks) {
          mirror.erase(f.seq_id);  // its shadow is partly updated: re-send it whole next time
          return absl::InvalidArgumentError(
              absl::StrCat("Forward: seq_id ", f.seq_id, " tables.heads[", hd, "] holds block id ",
                           blocks[k], " outside [0, ", layout.num_blocks, ")"));
        }
      }
      shadow.resize(blocks.size());
      for (size_t k = from; k < blocks.size(); ++k) {
        shadow[k] = blocks[k];
        pairs.push_back(static_cast<int32_t>(base + static_cast<int64_t>(hd) * mirror_cap + k));
        pairs.push_back(blocks[k]);
      }
    }
  }
  if (!pairs.empty()) {
    const int32_t n = static_cast<int32_t>(pairs.size() / 2);
    RETURN_IF_ERROR(patch_host.Reserve(pairs.size() * sizeof(int32_t), "mirror patch (host)"));
    RETURN_IF_ERROR(patch.Reserve(pairs.size() * sizeof(int32_t), "mirror patch"));
    std::memcpy(patch_host.as<void>(), pairs.data(), pairs.size() * sizeof(int32_t));
    KVC_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(patch.as<void>(), patch_host.as<void>(), pairs.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice, stream),
        "mirror patch upload");
    kernels::ScatterInt32Params sp;
    sp.out = mirror_blocks.as<int32_t>();
    sp.out_size = static_cast<int64_t>(mirror_slots) * LH * mirror_cap;
    sp.pairs = patch.as<int32_t>();
    sp.num_pairs = n;
    RETURN_IF_ERROR(kernels::ScatterInt32(sp, handle()));
    mirror_entries_uploaded += n;
  }
  return true;
}

void CudaExecutor::State::ForgetMirror(int64_t seq_id) {
  auto it = mirror.find(seq_id);
  if (it == mirror.end()) return;
  free_slots.push_back(it->second.slot);
  mirror.erase(it);
}

void CudaExecutor::ForgetSequence(int64_t seq_id) { s_->ForgetMirror(seq_id); }

void CudaExecutor::set_use_cuda_graphs(bool on) {
  s_->use_graphs = on;
  if (!on) s_->ClearGraphs();
}

void CudaExecutor::set_mirror_limit_bytes(int64_t bytes) {
  s_->mirror_limit_bytes = bytes;
  s_->mirror.clear();
  s_->free_slots.clear();
  s_->mirror_slots = 0;
  s_->mirror_cap = 0;
  s_->mirror_blocks.Free();
}

CudaExecutor::Stats CudaExecutor::stats() const {
  Stats st;
  st.forward_calls = static_cast<int64_t>(s_->forward_calls);
  st.graph_captures = s_->graph_captures;
  st.graph_launches = s_->graph_launches;
  st.gemms_tuned = s_->gemms_tuned;
  st.host_prep_ns = s_->host_prep_ns;
  st.sync_wait_ns = s_->sync_wait_ns;
  st.gemms_tuned_off_first = s_->gemms_retuned_better;
  st.mirror_entries_uploaded = s_->mirror_entries_uploaded;
  st.full_table_uploads = s_->full_table_uploads;
  return st;
}

absl::Status CudaExecutor::MoveKvs(std::span<const KvMove> moves) {
  State& s = *s_;
  const int32_t bs = s.layout.block_size;
  for (size_t i = 0; i < moves.size(); ++i) {
    const KvMove& m = moves[i];
    for (auto [block, offset, what] :
         {std::tuple<int32_t, int32_t, const char*>{m.src_block, m.src_offset, "source"},
          std::tuple<int32_t, int32_t, const char*>{m.dst_block, m.dst_offset, "destination"}}) {
      if (block < 0 || block >= s.layout.num_blocks || offset < 0 || offset >= bs) {
        return absl::InvalidArgumentError(absl::StrCat("MoveKvs: moves[", i, "] ", what, " (block ",
                                                       block, ", offset ", offset,
                                                       ") is out of range"));
      }
    }
  }
  if (moves.empty()) return absl::OkStatus();
  KVC_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device), "cudaSetDevice");
  s.reader.Invalidate();
  const size_t n = moves.size();
  RETURN_IF_ERROR(s.moves_host.Reserve(2 * n * sizeof(int64_t), "moves (host)"));
  RETURN_IF_ERROR(s.moves.Reserve(2 * n * sizeof(int64_t), "moves"));
  int64_t* src = s.moves_host.as<int64_t>();
  int64_t* dst = src + n;
  // Waves of independent moves: a move that reads a slot written earlier in the wave, or writes
  // a slot read or written earlier in the wave, starts a new wave.
  std::vector<std::pair<size_t, size_t>> waves;  // [begin, end) into src/dst
  std::unordered_set<int64_t> reads, writes;
  size_t count = 0, wave_begin = 0;
  for (const KvMove& m : moves) {
    const int64_t a = static_cast<int64_t>(m.src_block) * bs + m.src_offset;
    const int64_t b = static_cast<int64_t>(m.dst_block) * bs + m.dst_offset;
    if (a == b) continue;
    if (writes.count(a) || reads.count(b) || writes.count(b)) {
      waves.push_back({wave_begin, count});
      wave_begin = count;
      reads.clear();
      writes.clear();
    }
    reads.insert(a);
    writes.insert(b);
    src[count] = a;
    dst[count] = b;
    ++count;
  }
  if (count > wave_begin) waves.push_back({wave_begin, count});
  if (count == 0) return absl::OkStatus();
  // Keep the two halves contiguous for one upload: dst follows src at offset n.
  KVC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.moves.as<void>(), src, 2 * n * sizeof(int64_t),
                                           cudaMemcpyHostToDevice, s.stream),
                           "upload of moves");
  const int64_t* d_src = s.moves.as<int64_t>();
  const int64_t* d_dst = d_src + n;
  for (const auto& [b, e] : waves) {
    kernels::KvMoveParams mp;
    mp.cache = s.Cache();
    mp.num_moves = static_cast<int32_t>(e - b);
    mp.src_slots = d_src + b;
    mp.dst_slots = d_dst + b;
    RETURN_IF_ERROR(kernels::MoveKvSlots(mp, s.handle()));
  }
  KVC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream), "MoveKvs");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CudaExecutor::ReadKvRow(int32_t block, int32_t offset,
                                                           bool value) const {
  const State& s = *s_;
  if (block < 0 || block >= s.layout.num_blocks || offset < 0 || offset >= s.layout.block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReadKvRow: (block ", block, ", offset ", offset, ") is out of range"));
  }
  KVC_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device), "cudaSetDevice");
  std::vector<Bf16> row(s.kd);
  const int64_t slot = static_cast<int64_t>(block) * s.layout.block_size + offset;
  const Bf16* base = value ? s.v.as<Bf16>() : s.k.as<Bf16>();
  KVC_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(row.data(), base + slot * s.kd, sizeof(Bf16) * s.kd, cudaMemcpyDeviceToHost),
      "ReadKvRow");
  std::vector<float> outv(s.d);
  for (int32_t r = 0; r < s.d; ++r) outv[r] = kernels::Bf16ToFloat(row[s.Pad(r)]);
  return outv;
}

}  // namespace kvc
