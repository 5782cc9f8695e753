// Decode-attention benchmark: achieved bandwidth of kvc::kernels::DecodeAttention against a
// device-to-device cudaMemcpy measured in the same run, on the device it runs on.
//
//   decode_attention_bench [--iters N] [--quick] [--json PATH] [--contiguous]
//                          [--batches 1,4,..] [--ctxs 1024,..]
//
// Model shape: 32 query heads, 8 kv heads (GQA 4), head_dim 128, block 16, bf16 K/V. For batch
// B in {1, 4, 16, 64, 256} and context C in {1k .. 128k} (points whose KV does not fit are
// skipped): "uniform" = every head holds C KVs; "ragged" = per-head lengths uniform in
// [0.1, 1] x C (a compressed cache). Bandwidth = bytes of K+V read / kernel time (CUDA events
// around each launch, 3 warm-ups, median of N). Inputs rotate over enough copies that the
// working set is >= 512 MiB, so small points do not run out of L2. Blocks are handed out in
// shuffled order (--contiguous: each head's blocks are consecutive ids, a diagnostic of the cost
// of scattered pages). The memcpy figure counts bytes read + written (2 x size / time).
// "+scores" repeats the launch with decode-score accumulation on (same bytes counted);
// "scores%" is its extra time relative to the launch without scores.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/include/kvc/kernels/cuda_kernels.h"

namespace kvc {
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
constexpr int64_t kBlockBytes = int64_t{kBlock} * kHeadDim * 2;  // one of K or V
constexpr int64_t kMinWorkingSet = int64_t{512} << 20;
constexpr int kMaxSets = 64;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times `launch` (enqueues one iteration given its index) with events: warm-up, then N
// individually timed iterations; returns the median in milliseconds.
template <typename F>
double TimeMs(int iters, F launch) {
  cudaEvent_t a, b;
  BENCH_CUDA(cudaEventCreate(&a));
  BENCH_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch(i);
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    BENCH_CUDA(cudaEventRecord(a));
    launch(i);
    BENCH_CUDA(cudaEventRecord(b));
    BENCH_CUDA(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  BENCH_CUDA(cudaEventDestroy(a));
  BENCH_CUDA(cudaEventDestroy(b));
  return Median(ms);
}

double MemcpyBandwidthGBs(int iters) {
  const size_t bytes = size_t{1} << 30;
  void* src = nullptr;
  void* dst = nullptr;
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&src), bytes));
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&dst), bytes));
  BENCH_CUDA(cudaMemset(src, 1, bytes));
  const double ms = TimeMs(
      iters, [&](int) { BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); });
  BENCH_CUDA(cudaFree(src));
  BENCH_CUDA(cudaFree(dst));
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

struct Result {
  int batch, ctx;
  bool ragged;
  double kv_mb, us, gbs, pct, us_scores;
  int splits, sets;
};

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  using namespace kvc;
  int iters = 20;
  bool quick = false;
  bool contiguous = false;
  std::vector<int> batches = {1, 4, 16, 64, 256};
  std::vector<int> ctxs = {1024, 4096, 16384, 32768, 65536, 131072};
  auto parse_list = [](const char* s) {
    std::vector<int> v;
    for (const char* p = s; *p != 0;) {
      v.push_back(std::atoi(p));
      while (*p != 0 && *p != ',') ++p;
      if (*p == ',') ++p;
    }
    return v;
  };
  std::string json;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
      batches = {1, 16, 256};
      ctxs = {1024, 16384, 131072};
    } else if (!std::strcmp(argv[i], "--contiguous")) {
      contiguous = true;
    } else if (!std::strcmp(argv[i], "--batches") && i + 1 < argc) {
      batches = parse_list(argv[++i]);
    } else if (!std::strcmp(argv[i], "--ctxs") && i + 1 < argc) {
      ctxs = parse_list(argv[++i]);
    } else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--iters N] [--quick] [--json PATH] [--contiguous] "
                   "[--batches B,..] [--ctxs C,..]\n",
                   argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  const double memcpy_gbs = MemcpyBandwidthGBs(iters);

  size_t free_bytes = 0, total_bytes = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t reserve = int64_t{4} << 30;  // tables, outputs, workspaces
  const int64_t pool_cap = static_cast<int64_t>(free_bytes) - reserve;
  const int64_t max_blocks = pool_cap / (2 * kBlockBytes);
  kernels::Bf16* k_pool = nullptr;
  kernels::Bf16* v_pool = nullptr;
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&k_pool), max_blocks * kBlockBytes));
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&v_pool), max_blocks * kBlockBytes));
  {
    kernels::FillRandomParams fp;
    fp.data = k_pool;
    fp.n = max_blocks * kBlockBytes / 2;
    fp.seed = 1;
    BENCH_OK(kernels::FillRandom(fp, nullptr));
    fp.data = v_pool;
    fp.seed = 2;
    BENCH_OK(kernels::FillRandom(fp, nullptr));
  }
  float* scores = nullptr;
  BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&scores), max_blocks * kBlock * sizeof(float)));
  BENCH_CUDA(cudaMemset(scores, 0, max_blocks * kBlock * sizeof(float)));

  std::printf(
      "device: %s, %d SMs, %.1f GiB; cudaMemcpy D2D %.0f GB/s (read+write, 1 GiB, median of %d)\n",
      prop.name, sms, total_bytes / double(1 << 30), memcpy_gbs, iters);
  std::printf(
      "decode attention: %d q heads, %d kv heads (GQA %d), head_dim %d, block %d, bf16 K/V, "
      "%s blocks\n",
      kQHeads, kKvHeads, kQHeads / kKvHeads, kHeadDim, kBlock,
      contiguous ? "contiguous" : "shuffled");
  std::printf("%6s %7s %7s %9s %6s %5s %10s %8s %8s %12s %8s\n", "batch", "ctx", "lengths",
              "KV MiB", "splits", "sets", "time_us", "GB/s", "%memcpy", "+scores_us", "scores%");

  std::mt19937 rng(12345);
  std::vector<Result> results;
  for (int ctx : ctxs) {
    for (int batch : batches) {
      for (bool ragged : {false, true}) {
        const int heads = batch * kKvHeads;
        std::vector<int32_t> lengths(heads, ctx);
        if (ragged) {
          std::uniform_real_distribution<double> u(0.1, 1.0);
          for (int32_t& n : lengths) n = std::max(1, static_cast<int>(u(rng) * ctx));
        }
        int64_t blocks_per_set = 0;
        int64_t kvs = 0;
        for (int32_t n : lengths) {
          blocks_per_set += (n + kBlock - 1) / kBlock;
          kvs += n;
        }
        const int64_t kv_bytes = kvs * kHeadDim * 2 * 2;
        const int sets = static_cast<int>(
            std::clamp<int64_t>((kMinWorkingSet + kv_bytes - 1) / kv_bytes, 1, kMaxSets));
        if (blocks_per_set * sets > max_blocks) {
          std::printf("%6d %7d %7s %9.0f   skipped: KV does not fit\n", batch, ctx,
                      ragged ? "ragged" : "uniform", kv_bytes / double(1 << 20));
          std::fflush(stdout);
          continue;
        }
        // Tables of every set: shuffled distinct blocks.
        std::vector<int32_t> ids(blocks_per_set * sets);
        std::iota(ids.begin(), ids.end(), 0);
        if (!contiguous) std::shuffle(ids.begin(), ids.end(), rng);
        std::vector<int32_t> offsets(static_cast<size_t>(heads) * sets);
        int64_t at = 0;
        for (int st = 0; st < sets; ++st)
          for (int h = 0; h < heads; ++h) {
            offsets[static_cast<size_t>(st) * heads + h] = static_cast<int32_t>(at);
            at += (lengths[h] + kBlock - 1) / kBlock;
          }
        int32_t *d_ids, *d_offsets, *d_lengths;
        BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_ids), ids.size() * 4));
        BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_offsets), offsets.size() * 4));
        BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_lengths), lengths.size() * 4));
        BENCH_CUDA(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        BENCH_CUDA(
            cudaMemcpy(d_offsets, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
        BENCH_CUDA(
            cudaMemcpy(d_lengths, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice));
        const int32_t max_n = *std::max_element(lengths.begin(), lengths.end());
        const int64_t q_elems = int64_t{batch} * kQHeads * kHeadDim;
        kernels::Bf16 *d_q, *d_out;
        BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_q), q_elems * 2));
        BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_out), q_elems * 2));
        kernels::FillRandomParams fp;
        fp.data = d_q;
        fp.n = q_elems;
        fp.seed = 3;
        BENCH_OK(kernels::FillRandom(fp, nullptr));

        double us[2] = {0, 0};
        int splits = 0;
        kernels::DecodeAttentionPlan plans[2];
        for (int w = 0; w < 2; ++w) {
          plans[w] = kernels::MakeDecodeAttentionPlan(batch, kKvHeads, kQHeads, kHeadDim, max_n,
                                                      sms, w != 0);
        }
        void* ws = nullptr;
        if (cudaMalloc(&ws, std::max<int64_t>(plans[1].workspace_bytes, 256)) != cudaSuccess) {
          cudaGetLastError();  // clear the allocation error
          std::printf("%6d %7d %7s %9.0f   skipped: workspace does not fit\n", batch, ctx,
                      ragged ? "ragged" : "uniform", kv_bytes / double(1 << 20));
          ws = nullptr;
        }
        for (int with_scores = 0; ws != nullptr && with_scores < 2; ++with_scores) {
          const kernels::DecodeAttentionPlan& plan = plans[with_scores];
          splits = plan.num_splits;
          kernels::DecodeAttentionParams p;
          p.cache.k = k_pool;
          p.cache.v = v_pool;
          p.cache.scores = scores;
          p.cache.num_blocks = max_blocks;
          p.cache.block_size = kBlock;
          p.cache.head_dim = kHeadDim;
          p.tables.block_ids = d_ids;
          p.tables.num_kvs = d_lengths;
          p.tables.num_seqs = batch;
          p.tables.num_kv_heads = kKvHeads;
          p.tables.max_num_kvs = max_n;
          p.num_q_heads = kQHeads;
          p.scale = 0.08838834764831845f;
          p.q = d_q;
          p.out = d_out;
          p.accumulate_scores = with_scores != 0;
          p.num_splits = plan.num_splits;
          p.chunk_size = plan.chunk_size;
          p.workspace = ws;
          p.workspace_bytes = plan.workspace_bytes;
          us[with_scores] = 1e3 * TimeMs(iters, [&](int i) {
                              kernels::DecodeAttentionParams pi = p;
                              pi.tables.table_offsets =
                                  d_offsets + static_cast<size_t>(i % sets) * heads;
                              BENCH_OK(kernels::DecodeAttention(pi, nullptr));
                            });
          if (quick) break;
        }
        const bool ran = ws != nullptr;
        if (ran) BENCH_CUDA(cudaFree(ws));
        if (!ran) {
          BENCH_CUDA(cudaFree(d_ids));
          BENCH_CUDA(cudaFree(d_offsets));
          BENCH_CUDA(cudaFree(d_lengths));
          BENCH_CUDA(cudaFree(d_q));
          BENCH_CUDA(cudaFree(d_out));
          continue;
        }
        Result r;
        r.batch = batch;
        r.ctx = ctx;
        r.ragged = ragged;
        r.kv_mb = kv_bytes / double(1 << 20);
        r.us = us[0];
        r.gbs = kv_bytes / (us[0] * 1e-6) / 1e9;
        r.pct = 100.0 * r.gbs / memcpy_gbs;
        r.us_scores = us[1];
        r.splits = splits;
        r.sets = sets;
        results.push_back(r);
        std::printf("%6d %7d %7s %9.1f %6d %5d %10.1f %8.0f %7.1f%% %12.1f %7.1f%%\n", batch, ctx,
                    ragged ? "ragged" : "uniform", r.kv_mb, r.splits, sets, r.us, r.gbs, r.pct,
                    r.us_scores, quick ? 0.0 : 100.0 * (r.us_scores / r.us - 1.0));
        std::fflush(stdout);
        BENCH_CUDA(cudaFree(d_ids));
        BENCH_CUDA(cudaFree(d_offsets));
        BENCH_CUDA(cudaFree(d_lengths));
        BENCH_CUDA(cudaFree(d_q));
        BENCH_CUDA(cudaFree(d_out));
      }
    }
  }
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (f != nullptr) {
      std::fprintf(f, "{\"device\": \"%s\", \"memcpy_gbs\": %.1f, \"points\": [\n", prop.name,
                   memcpy_gbs);
      for (size_t i = 0; i < results.size(); ++i) {
        const Result& r = results[i];
        std::fprintf(f,
                     "  {\"batch\": %d, \"ctx\": %d, \"lengths\": \"%s\", \"kv_mib\": %.1f, "
                     "\"splits\": %d, \"us\": %.2f, \"gbs\": %.1f, \"pct_memcpy\": %.1f, "
                     "\"us_with_scores\": %.2f}%s\n",
                     r.batch, r.ctx, r.ragged ? "ragged" : "uniform", r.kv_mb, r.splits, r.us,
                     r.gbs, r.pct, r.us_scores, i + 1 < results.size() ? "," : "");
      }
      std::fprintf(f, "]}\n");
      std::fclose(f);
    }
  }
  BENCH_CUDA(cudaFree(k_pool));
  BENCH_CUDA(cudaFree(v_pool));
  BENCH_CUDA(cudaFree(scores));
  return 0;
}
