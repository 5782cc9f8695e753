// Prefill-attention benchmark: achieved TFLOP/s of kvc::kernels::PrefillAttention (causal,
// paged per-head K/V, GQA) and the time of AccumulateWindowScores (w = 32, pool 7) on the same
// batch, on the device it runs on.
//
//   prefill_attention_bench [--iters N]
//
// Model shape: 32 query heads, 8 kv heads (GQA 4), head_dim 128, block 16. Each point is a batch
// of B fresh prompts of n tokens (B * n = 32k tokens), KVs already in the pages in position
// order. FLOPs counted: 4 * head_dim * q_heads * n (n + 1) / 2 per prompt (causal half of QK^T
// and PV). CUDA events around each launch, 3 warm-ups, median of N.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/include/kvc/kernels/cuda_kernels.h"

namespace {

#define BENCH_CUDA(expr)                                                                         \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

#define BENCH_OK(expr)                                                                          \
  do {                                                                                          \
    const absl::Status s_ = (expr);                                                             \
    if (!s_.ok()) {                                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, s_.ToString().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

constexpr int kKvHeads = 8;
constexpr int kQHeads = 32;
constexpr int kHeadDim = 128;
constexpr int kBlock = 16;

template <typename T>
T* Alloc(size_t n) {
  void* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename F>
double MedianMs(int iters, F launch) {
  cudaEvent_t a, b;
  BENCH_CUDA(cudaEventCreate(&a));
  BENCH_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch();
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    BENCH_CUDA(cudaEventRecord(a));
    launch();
    BENCH_CUDA(cudaEventRecord(b));
    BENCH_CUDA(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  BENCH_CUDA(cudaEventDestroy(a));
  BENCH_CUDA(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvc;
  int iters = 10;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iters N]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "prefill attention: %d q heads, %d kv heads (GQA %d), head_dim %d, block %d, causal\n",
      kQHeads, kKvHeads, kQHeads / kKvHeads, kHeadDim, kBlock);
  std::printf("%6s %7s %10s %9s %14s\n", "batch", "n", "time_us", "TFLOP/s", "window32_us");
  const int total_tokens = 32768;
  for (int n : {512, 2048, 8192, 32768}) {
    const int batch = total_tokens / n;
    const int heads = batch * kKvHeads;
    const int blocks_per_head = (n + kBlock - 1) / kBlock;
    const int64_t num_blocks = static_cast<int64_t>(heads) * blocks_per_head;
    kernels::Bf16* k = Alloc<kernels::Bf16>(num_blocks * kBlock * kHeadDim);
    kernels::Bf16* v = Alloc<kernels::Bf16>(num_blocks * kBlock * kHeadDim);
    kernels::Bf16* q = Alloc<kernels::Bf16>(static_cast<size_t>(total_tokens) * kQHeads * kHeadDim);
    kernels::Bf16* out =
        Alloc<kernels::Bf16>(static_cast<size_t>(total_tokens) * kQHeads * kHeadDim);
    float* lse = Alloc<float>(static_cast<size_t>(total_tokens) * kQHeads);
    float* scores = Alloc<float>(num_blocks * kBlock);
    int32_t* positions = Alloc<int32_t>(num_blocks * kBlock);
    for (kernels::Bf16* p : {k, v, q}) {
      kernels::FillRandomParams fp;
      fp.data = p;
      fp.n =
          (p == q ? static_cast<int64_t>(total_tokens) * kQHeads : num_blocks * kBlock) * kHeadDim;
      fp.seed = reinterpret_cast<uintptr_t>(p);
      BENCH_OK(kernels::FillRandom(fp, nullptr));
    }
    // Head hd's blocks are hd * blocks_per_head + j; slot i holds position i.
    std::vector<int32_t> ids(num_blocks), offsets(heads), counts(heads, n),
        pos(num_blocks * kBlock);
    for (int64_t i = 0; i < num_blocks; ++i) ids[i] = static_cast<int32_t>(i);
    for (int h = 0; h < heads; ++h) offsets[h] = h * blocks_per_head;
    for (int64_t i = 0; i < num_blocks * kBlock; ++i)
      pos[i] = static_cast<int32_t>(i % (blocks_per_head * kBlock));
    std::vector<int32_t> cu(batch + 1), qpos(total_tokens);
    for (int s = 0; s <= batch; ++s) cu[s] = s * n;
    for (int t = 0; t < total_tokens; ++t) qpos[t] = t % n;
    int32_t* d_ids = Alloc<int32_t>(ids.size());
    int32_t* d_off = Alloc<int32_t>(offsets.size());
    int32_t* d_cnt = Alloc<int32_t>(counts.size());
    int32_t* d_cu = Alloc<int32_t>(cu.size());
    int32_t* d_qpos = Alloc<int32_t>(qpos.size());
    BENCH_CUDA(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d_off, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d_cnt, counts.data(), counts.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d_cu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d_qpos, qpos.data(), qpos.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(positions, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemset(scores, 0, num_blocks * kBlock * sizeof(float)));

    kernels::PrefillAttentionParams p;
    p.cache.k = k;
    p.cache.v = v;
    p.cache.scores = scores;
    p.cache.positions = positions;
    p.cache.num_blocks = num_blocks;
    p.cache.block_size = kBlock;
    p.cache.head_dim = kHeadDim;
    p.tables.block_ids = d_ids;
    p.tables.table_offsets = d_off;
    p.tables.num_kvs = d_cnt;
    p.tables.num_seqs = batch;
    p.tables.num_kv_heads = kKvHeads;
    p.tables.max_num_kvs = n;
    p.num_q_heads = kQHeads;
    p.scale = 0.08838834764831845f;
    p.num_tokens = total_tokens;
    p.max_q_len = n;
    p.cu_q = d_cu;
    p.q_positions = d_qpos;
    p.q = q;
    p.out = out;
    p.lse = lse;
    const double ms = MedianMs(iters, [&] { BENCH_OK(kernels::PrefillAttention(p, nullptr)); });
    const double flops = 4.0 * kHeadDim * kQHeads * batch * (double(n) * (n + 1) / 2);

    const int64_t ws_bytes = kernels::WindowScoreWorkspaceBytes(batch, kKvHeads, kQHeads, n);
    void* ws = Alloc<char>(ws_bytes);
    kernels::WindowScoreParams w;
    w.cache = p.cache;
    w.tables = p.tables;
    w.num_q_heads = kQHeads;
    w.scale = p.scale;
    w.window = 32;
    w.pool_kernel = 7;
    w.cu_q = d_cu;
    w.q_positions = d_qpos;
    w.q = q;
    w.lse = lse;
    w.workspace = ws;
    w.workspace_bytes = ws_bytes;
    const double wms =
        MedianMs(iters, [&] { BENCH_OK(kernels::AccumulateWindowScores(w, nullptr)); });
    std::printf("%6d %7d %10.1f %9.1f %14.1f\n", batch, n, ms * 1e3, flops / (ms * 1e-3) / 1e12,
                wms * 1e3);
    std::fflush(stdout);
    for (void* ptr :
         {static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(q),
          static_cast<void*>(out), static_cast<void*>(lse), static_cast<void*>(scores),
          static_cast<void*>(positions), static_cast<void*>(d_ids), static_cast<void*>(d_off),
          static_cast<void*>(d_cnt), static_cast<void*>(d_cu), static_cast<void*>(d_qpos), ws}) {
      BENCH_CUDA(cudaFree(ptr));
    }
  }
  return 0;
}
