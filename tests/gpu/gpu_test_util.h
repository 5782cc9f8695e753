// Helpers of the GPU kernel tests (tests/gpu): device buffers, random inputs, the paged KV
// fixture shared by the attention tests, and error statistics against a reference.
//
// Inputs are fresh random values every run (seed printed; KVC_TEST_SEED=N repeats a run);
// outputs are poisoned (bf16 NaN / fp32 NaN) before each launch so an unwritten element fails.
// KVC_GPU_TEST_SMALL=1 shrinks the cases (for compute-sanitizer runs).
#ifndef KVC_TESTS_GPU_GPU_TEST_UTIL_H_
#define KVC_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "gtest/gtest.h"
#include "kernels/include/kvc/kernels/bf16.h"
#include "kernels/include/kvc/kernels/params.h"

namespace kvc::gpu_test {

using kernels::Bf16;
using kernels::Bf16ToFloat;
using kernels::FloatToBf16;

#define KVC_CUDA_CHECK(expr)                                                                       \
  do {                                                                                             \
    const cudaError_t kvc_cuda_err_ = (expr);                                                      \
    KVC_CHECK(kvc_cuda_err_ == cudaSuccess) << #expr << ": " << cudaGetErrorString(kvc_cuda_err_); \
  } while (0)

inline bool SmallCases() {
  const char* v = std::getenv("KVC_GPU_TEST_SMALL");
  return v != nullptr && std::string(v) == "1";
}

// Seed of this test: KVC_TEST_SEED or a fresh random one; recorded in the test's XML/output.
inline uint32_t TestSeed() {
  uint32_t seed;
  if (const char* v = std::getenv("KVC_TEST_SEED")) {
    seed = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
  } else {
    seed = std::random_device{}();
  }
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

// Owning device buffer of T (cudaMalloc / cudaFree). Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) KVC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) {
    o.ptr_ = nullptr;
    o.n_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& host) {
    KVC_CHECK_EQ(host.size(), n_);
    if (n_ > 0)
      KVC_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    KVC_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> host(n_);
    if (n_ > 0)
      KVC_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Fills every byte with `byte` (0xff: bf16 and fp32 NaN).
  void Poison(int byte = 0xff) {
    if (n_ > 0) KVC_CUDA_CHECK(cudaMemset(ptr_, byte, n_ * sizeof(T)));
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Random bf16 values ~ N(0, sigma^2), rounded to bf16.
inline std::vector<Bf16> RandomBf16(size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<Bf16> v(n);
  for (Bf16& x : v) x = FloatToBf16(nd(rng));
  return v;
}

inline std::vector<float> ToFloat(const std::vector<Bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = Bf16ToFloat(v[i]);
  return f;
}

// Error of `got` against `ref`: normwise relative error ||got - ref|| / ||ref|| and the largest
// elementwise |got - ref|. Any non-finite `got` (where ref is finite) counts as a failure.
struct ErrorStats {
  double rel = 0.0;
  double max_abs = 0.0;
  double ref_norm = 0.0;
  int64_t non_finite = 0;
  int64_t count = 0;

  bool Ok(double tol) const { return non_finite == 0 && rel <= tol; }
  std::string Str() const {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "rel %.3g, max_abs %.3g, non-finite %lld of %lld", rel, max_abs,
                  static_cast<long long>(non_finite), static_cast<long long>(count));
    return buf;
  }
};

class ErrorAccumulator {
 public:
  void Add(double got, double ref) {
    ++count_;
    if (!std::isfinite(got)) {
      ++non_finite_;
      return;
    }
    const double d = got - ref;
    diff2_ += d * d;
    ref2_ += ref * ref;
    max_abs_ = std::max(max_abs_, std::fabs(d));
  }
  ErrorStats Stats() const {
    ErrorStats s;
    s.ref_norm = std::sqrt(ref2_);
    s.rel = std::sqrt(diff2_) / std::max(s.ref_norm, 1e-30);
    if (diff2_ == 0.0) s.rel = 0.0;
    s.max_abs = max_abs_;
    s.non_finite = non_finite_;
    s.count = count_;
    return s;
  }

 private:
  double diff2_ = 0.0, ref2_ = 0.0, max_abs_ = 0.0;
  int64_t non_finite_ = 0, count_ = 0;
};

// A paged KV pool and per-head block tables (CSR) for a batch, built on the host and mirrored on
// the device. Head (s, h) = index s * H + h. Blocks are handed out in shuffled order, with spare
// unused blocks and spare table entries between heads, so nothing may assume contiguity.
struct PagedFixture {
  int num_seqs = 0, num_kv_heads = 0, head_dim = 0, block_size = 0;
  int64_t num_blocks = 0;
  std::vector<int32_t> num_kvs;        // [S*H]
  std::vector<int32_t> table_offsets;  // [S*H]
  std::vector<int32_t> block_ids;      // flat
  std::vector<Bf16> k, v;              // [num_blocks * b * d]
  std::vector<int32_t> positions;      // [num_blocks * b]
  std::vector<float> scores;           // [num_blocks * b]

  DeviceBuffer<Bf16> d_k, d_v;
  DeviceBuffer<int32_t> d_positions, d_num_kvs, d_offsets, d_block_ids;
  DeviceBuffer<float> d_scores;

  // Builds tables for per-head lengths `lengths` [S*H] (capacity for `extra` more KVs per head)
  // and random K/V; positions[s*H+h][i] is the stored position of slot i (must have
  // lengths[s*H+h] entries). Unused slots get position 1 << 30.
  void Build(int seqs, int kv_heads, int d, int b, const std::vector<int32_t>& lengths,
             const std::vector<std::vector<int32_t>>& slot_positions, std::mt19937& rng,
             int extra = 0) {
    num_seqs = seqs;
    num_kv_heads = kv_heads;
    head_dim = d;
    block_size = b;
    num_kvs = lengths;
    int64_t needed = 0;
    for (int32_t n : lengths) needed += (n + extra + b - 1) / b;
    num_blocks = needed + needed / 3 + 3;  // spare blocks that no head owns
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    size_t next = 0;
    table_offsets.clear();
    block_ids.clear();
    std::uniform_int_distribution<int> gap(0, 2);
    for (size_t hd = 0; hd < lengths.size(); ++hd) {
      for (int g = gap(rng); g > 0; --g) block_ids.push_back(-1);  // spare entries
      table_offsets.push_back(static_cast<int32_t>(block_ids.size()));
      const int blocks = (lengths[hd] + extra + b - 1) / b;
      for (int j = 0; j < blocks; ++j) block_ids.push_back(ids.at(next++));
    }
    if (block_ids.empty()) block_ids.push_back(-1);
    k = RandomBf16(static_cast<size_t>(num_blocks) * b * d, rng);
    v = RandomBf16(k.size(), rng);
    positions.assign(static_cast<size_t>(num_blocks) * b, 1 << 30);
    std::uniform_real_distribution<float> ud(0.0f, 1e-3f);
    scores.resize(positions.size());
    for (float& x : scores) x = ud(rng);
    for (size_t hd = 0; hd < lengths.size(); ++hd) {
      KVC_CHECK_EQ(slot_positions[hd].size(), static_cast<size_t>(lengths[hd]));
      for (int i = 0; i < lengths[hd]; ++i)
        positions[Slot(static_cast<int>(hd), i)] = slot_positions[hd][i];
    }
    Upload();
  }

  void Upload() {
    d_k = DeviceBuffer<Bf16>(k);
    d_v = DeviceBuffer<Bf16>(v);
    d_positions = DeviceBuffer<int32_t>(positions);
    d_scores = DeviceBuffer<float>(scores);
    d_num_kvs = DeviceBuffer<int32_t>(num_kvs);
    d_offsets = DeviceBuffer<int32_t>(table_offsets);
    d_block_ids = DeviceBuffer<int32_t>(block_ids);
  }

  // Physical slot (block * b + offset) of logical slot i of head hd = s * H + h.
  int64_t Slot(int hd, int i) const {
    return static_cast<int64_t>(block_ids[table_offsets[hd] + i / block_size]) * block_size +
           i % block_size;
  }
  int32_t MaxNumKvs() const {
    return num_kvs.empty() ? 0 : *std::max_element(num_kvs.begin(), num_kvs.end());
  }

  kernels::PagedKvCache Cache() const {
    kernels::PagedKvCache c;
    c.k = d_k.get();
    c.v = d_v.get();
    c.scores = d_scores.get();
    c.positions = d_positions.get();
    c.num_blocks = num_blocks;
    c.block_size = block_size;
    c.head_dim = head_dim;
    return c;
  }
  kernels::HeadTables Tables() const {
    kernels::HeadTables t;
    t.block_ids = d_block_ids.get();
    t.table_offsets = d_offsets.get();
    t.num_kvs = d_num_kvs.get();
    t.num_seqs = num_seqs;
    t.num_kv_heads = num_kv_heads;
    t.max_num_kvs = MaxNumKvs();
    return t;
  }
};

// Lengths that stress the paging: 1, b-1, b, b+1, 2b-1, 2b+1 and a few larger ragged values.
inline std::vector<int32_t> EdgeLengths(int b) {
  return {1, b - 1, b, b + 1, 2 * b - 1, 2 * b + 1, 3 * b, 37, 131, 300};
}

}  // namespace kvc::gpu_test

#endif  // KVC_TESTS_GPU_GPU_TEST_UTIL_H_
