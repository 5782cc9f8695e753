// ThreadPool: a small fork-join pool for the CPU reference kernels. ParallelFor splits an index
// range into chunks that the pool's threads and the calling thread take from a shared counter,
// and returns when all are done.
//
// Thread-safety: ParallelFor may be called from any thread; calls on one pool run one at a time
// (a second caller waits). A ParallelFor issued from inside a pool task runs inline, serially.
// The default pool has std::thread::hardware_concurrency() threads (the caller included);
// the environment variable KVC_CPU_THREADS overrides that count.
#ifndef KVC_KERNELS_CPU_THREAD_POOL_H_
#define KVC_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvc::cpu {

class ThreadPool {
 public:
  // `num_threads` counts the caller: 1 means no worker threads (everything inline).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool used by the kernels.
  static ThreadPool& Default();

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), each at least `min_chunk` long
  // (except the last). Runs inline when there is only one chunk.
  void ParallelFor(int64_t n, int64_t min_chunk,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;
  // The job of the current generation (read by workers after they see the generation).
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

// ThreadPool::Default().ParallelFor(...).
void ParallelFor(int64_t n, int64_t min_chunk,
                 const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace kvc::cpu

#endif  // KVC_KERNELS_CPU_THREAD_POOL_H_
