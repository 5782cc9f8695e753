// Sampling inside CudaExecutor::Forward (see cuda_executor_internal.h, executor.h): the
// kvc_sampling_cuda kernel over the logits rows of the sequences that ask for it, so a decode
// step's only device->host copy is [batch] int32 token ids. Falls back to the CPU reference
// (SampleTokenWithUniform on downloaded logits) when a sequence also asks for all_logits (its rows
// are not one per sequence) or when device sampling is switched off (KVC_DEVICE_SAMPLING=0,
// which also makes samples_tokens() false so the engine samples itself).
#include <cstring>

#include "kernels/cpu/sampling.h"
#include "kernels/include/kvc/kernels/sampling.h"
#include "worker/cuda_executor.h"
#include "worker/cuda_executor_internal.h"

namespace kvc {

bool CudaExecutor::samples_tokens() const { return s_->device_sampling; }

absl::Status CudaExecutor::State::PrepareSampling(const ForwardBatch& batch,
                                                  const std::vector<int32_t>& row_of_seq) {
  sample_rows = 0;
  sample_on_host = false;
  const int32_t n = static_cast<int32_t>(batch.seqs.size());
  bool any = false, all_logits = false;
  for (const ForwardSequence& f : batch.seqs) {
    any |= f.sample;
    all_logits |= f.all_logits;
  }
  if (!any) return absl::OkStatus();
  if (!device_sampling || all_logits) {
    sample_on_host = true;
    return absl::OkStatus();
  }
  // Row b of the logits is sequence b's (one row per sequence without all_logits).
  for (int32_t b = 0; b < n; ++b) {
    if (row_of_seq[b] != b) return absl::InternalError("PrepareSampling: unexpected logits rows");
  }
  // Layout (8-byte aligned): seed[n], counter[n] (uint64), temperature[n], top_p[n] (float),
  // top_k[n], tokens[n] (int32).
  const size_t bytes = static_cast<size_t>(n) * (8 + 8 + 4 + 4 + 4 + 4);
  RETURN_IF_ERROR(sample_host.Reserve(bytes, "sampling parameters (host)"));
  RETURN_IF_ERROR(sample_dev.Reserve(bytes, "sampling parameters"));
  char* h = sample_host.as<char>();
  auto* seed = reinterpret_cast<uint64_t*>(h);
  auto* counter = seed + n;
  auto* temperature = reinterpret_cast<float*>(counter + n);
  float* top_p = temperature + n;
  auto* top_k = reinterpret_cast<int32_t*>(top_p + n);
  for (int32_t b = 0; b < n; ++b) {
    const ForwardSequence& f = batch.seqs[b];
    seed[b] = f.sample_seed;
    counter[b] = f.sample_counter;
    // Sequences that do not sample get a greedy row (cheapest); their token is reported as -1.
    temperature[b] = f.sample ? f.sampling.temperature : 0.0f;
    top_p[b] = f.sample ? f.sampling.top_p : 1.0f;
    top_k[b] = f.sample ? f.sampling.top_k : 0;
  }
  const size_t param_bytes = static_cast<size_t>(n) * (8 + 8 + 4 + 4 + 4);
  KVC_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(sample_dev.as<void>(), h, param_bytes, cudaMemcpyHostToDevice, stream),
      "upload of sampling parameters");
  sample_rows = n;
  return absl::OkStatus();
}

absl::Status CudaExecutor::State::EnqueueSampling(int32_t logits_rows) {
  if (sample_rows == 0) return absl::OkStatus();
  const int32_t n = sample_rows;
  char* d = sample_dev.as<char>();
  auto* seed = reinterpret_cast<const uint64_t*>(d);
  const uint64_t* counter = seed + n;
  auto* temperature = reinterpret_cast<const float*>(counter + n);
  const float* top_p = temperature + n;
  auto* top_k = reinterpret_cast<const int32_t*>(top_p + n);
  kernels::SampleTokensParams p;
  p.rows = n;
  p.vocab = vocab;
  p.logits = logits.as<float>();
  p.logits_stride = vocab;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.seed = seed;
  p.counter = counter;
  p.out_tokens = const_cast<int32_t*>(top_k + n);
  p.workspace = nullptr;
  p.workspace_bytes = 0;
  if (kernels::SampleTokensWorkspaceBytes(n, vocab) > 0) {
    return absl::InternalError("CudaExecutor: the sampling kernel now needs a workspace");
  }
  return kernels::SampleTokens(p, handle());
}

absl::Status CudaExecutor::State::DownloadSampledTokens() {
  if (sample_rows == 0) return absl::OkStatus();
  const int32_t n = sample_rows;
  const size_t at = static_cast<size_t>(n) * (8 + 8 + 4 + 4 + 4);
  KVC_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(sample_host.as<char>() + at, sample_dev.as<char>() + at,
                      static_cast<size_t>(n) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream),
      "download of sampled tokens");
  return absl::OkStatus();
}

absl::Status CudaExecutor::State::FinishSampledTokens(const ForwardBatch& batch,
                                                      const std::vector<int32_t>& row_of_seq,
                                                      ForwardOutput* out) {
  out->tokens.clear();
  const size_t n = batch.seqs.size();
  if (sample_rows > 0) {
    const auto* tokens = reinterpret_cast<const int32_t*>(
        sample_host.as<char>() + static_cast<size_t>(sample_rows) * (8 + 8 + 4 + 4 + 4));
    out->tokens.assign(tokens, tokens + n);
    for (size_t b = 0; b < n; ++b) {
      if (!batch.seqs[b].sample) out->tokens[b] = -1;
    }
  } else if (sample_on_host) {
    out->tokens.assign(n, -1);
    for (size_t b = 0; b < n; ++b) {
      const ForwardSequence& f = batch.seqs[b];
      if (!f.sample) continue;
      std::span<const float> row(out->logits.data() + static_cast<size_t>(row_of_seq[b]) * vocab,
                                 vocab);
      out->tokens[b] =
          SampleTokenWithUniform(row, f.sampling, CounterUniform(f.sample_seed, f.sample_counter));
    }
    const bool any_all_logits = std::any_of(batch.seqs.begin(), batch.seqs.end(),
                                            [](const ForwardSequence& f) { return f.all_logits; });
    if (!batch.return_logits && !any_all_logits) out->logits.clear();
  }
  return absl::OkStatus();
}

}  // namespace kvc
