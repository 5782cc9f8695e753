// KV append: scatter new tokens' K/V into each head's tail slots (see params.h, KvAppendParams).
// One CTA per token; its threads copy 16-byte chunks of the K and V rows of every kv head, and
// the first chunk's thread also stores the token's position and zeroes the score.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kvc::kernels::internal {
namespace {

constexpr int kThreads = 128;

struct AppendArgs {
  KvAppendParams p;
  int log2b;
  int64_t k_stride;
  int64_t v_stride;
};

__global__ void __launch_bounds__(kThreads) AppendKvKernel(const __grid_constant__ AppendArgs a) {
  const KvAppendParams& p = a.p;
  const int token = blockIdx.x;
  // Sequence of the token: last s with cu_tokens[s] <= token (binary search).
  int lo = 0;
  int hi = p.tables.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (__ldg(p.cu_tokens + mid) <= token) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int s = lo;
  const int begin = __ldg(p.cu_tokens + s);
  const int n_new = __ldg(p.cu_tokens + s + 1) - begin;
  const int local = token - begin;
  const int H = p.tables.num_kv_heads;
  const int D = p.cache.head_dim;
  const int chunks = D / 8;
  const int pos = __ldg(p.token_positions + token);
  for (int item = threadIdx.x; item < H * 2 * chunks; item += kThreads) {
    const int h = item / (2 * chunks);
    const int rem = item - h * 2 * chunks;
    const bool is_v = rem >= chunks;
    const int c = is_v ? rem - chunks : rem;
    const int sh = s * H + h;
    const int count = min(__ldg(p.tables.num_kvs + sh), p.tables.max_num_kvs);
    const int slot = count - n_new + local;
    if (slot < 0 || slot >= count) continue;  // inconsistent tables: write nothing
    const int32_t* list = p.tables.block_ids + __ldg(p.tables.table_offsets + sh);
    const int64_t phys = PhysSlot(list, slot, a.log2b);
    const Bf16* src = is_v ? p.v + token * a.v_stride : p.k + token * a.k_stride;
    Bf16* dst = is_v ? p.cache.v : p.cache.k;
    Store16(dst + phys * D + c * 8, Load16(src + static_cast<int64_t>(h) * D + c * 8));
    if (!is_v && c == 0) {
      p.cache.positions[phys] = pos;
      p.cache.scores[phys] = 0.0f;
    }
  }
}

}  // namespace

cudaError_t LaunchAppendKv(const KvAppendParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0 || p.tables.num_seqs == 0) return cudaSuccess;
  AppendArgs a;
  a.p = p;
  a.log2b = Log2Pow2(p.cache.block_size);
  const int64_t row = static_cast<int64_t>(p.tables.num_kv_heads) * p.cache.head_dim;
  a.k_stride = p.k_stride ? p.k_stride : row;
  a.v_stride = p.v_stride ? p.v_stride : row;
  AppendKvKernel<<<p.num_tokens, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace kvc::kernels::internal
