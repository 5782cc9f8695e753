// Communicator: the collectives a tensor-parallel group of ranks needs (one rank per device, or
// per thread for the CPU backend), and LocalCommunicatorGroup, an in-process implementation that
// connects N threads of one process (the CPU tensor-parallel executor and the tests).
//
// The interface maps 1:1 onto NCCL, whose implementation comes with the CUDA executor:
//   AllReduceSum(float / int64)  ncclAllReduce(buf, buf, count, ncclFloat32 / ncclInt64, ncclSum)
//   AllGather                    ncclAllGather(send, recv, count, ncclFloat32) (rank-major recv)
//   Broadcast                    ncclBroadcast(buf, buf, bytes, ncclUint8, root)
//   Barrier                      an ncclAllReduce of one int32 + a stream synchronisation
//   Abort                        ncclCommAbort
// Buffers are spans over memory of the rank's device (host memory here; device pointers for
// NCCL, where a span is only a (pointer, size) pair that the host never dereferences). Every rank
// of a group must issue the same collectives in the same order with the same counts (NCCL's
// rule); the local implementation detects a mismatch and fails the collective on every rank
// (NCCL cannot, and hangs or corrupts).
//
// The future NCCL implementation MUST set NCCL_NVLS_ENABLE=0 in the environment before
// ncclCommInitRank (NVLink SHARP / multicast must stay off on the machines we run on; see the
// device notes), and calls are stream-ordered there: a call returns once the collective is
// enqueued on the communicator's stream, not when it is done.
//
// Results are bit-reproducible: LocalCommunicatorGroup sums every element in rank order
// 0, 1, ..., N-1, so every rank gets the same bits, run after run, whatever the thread timing.
//
// Ownership: LocalCommunicatorGroup owns its N communicators. Thread-safety: each communicator is
// used by ONE thread (its rank's); LocalCommunicatorGroup::Abort() may be called from any thread.
#ifndef KVC_WORKER_COMMUNICATOR_H_
#define KVC_WORKER_COMMUNICATOR_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // In place: afterwards data[i] on every rank is the sum over ranks of their data[i] (summed in
  // rank order). Every rank passes the same size.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  virtual absl::Status AllReduceSum(std::span<int64_t> data) = 0;
  // recv[r * send.size() + i] = send[i] of rank r. recv.size() == world_size() * send.size();
  // recv must not overlap send.
  virtual absl::Status AllGather(std::span<const float> send, std::span<float> recv) = 0;
  // Copies root's `data` into every other rank's `data` (same size on every rank).
  virtual absl::Status Broadcast(std::span<std::byte> data, int root) = 0;
  // Returns once every rank has called Barrier().
  virtual absl::Status Barrier() = 0;
  // Unblocks the group: pending and later collectives on every rank fail with ABORTED. A rank
  // that fails between collectives calls it, so that the others do not wait for it forever.
  virtual void Abort() = 0;
};

// N in-process communicators for N threads. Collectives rendezvous on a shared barrier; an
// all-reduce is a reduce-scatter (rank r sums slice r of every rank's buffer, in rank order,
// into shared scratch) followed by every rank copying the whole result back.
class LocalCommunicatorGroup {
 public:
  // INVALID_ARGUMENT unless 1 <= world_size <= 1024.
  static absl::StatusOr<std::unique_ptr<LocalCommunicatorGroup>> Create(int world_size);
  ~LocalCommunicatorGroup();
  LocalCommunicatorGroup(const LocalCommunicatorGroup&) = delete;
  LocalCommunicatorGroup& operator=(const LocalCommunicatorGroup&) = delete;

  int world_size() const { return world_size_; }
  // REQUIRES 0 <= rank < world_size (checked). Owned by the group.
  Communicator* communicator(int rank);
  // Fails every pending and later collective of every rank with ABORTED (thread-safe).
  void Abort();
  bool aborted() const;

 private:
  friend class LocalCommunicator;
  enum class Op { kAllReduceFloat, kAllReduceInt64, kAllGather, kBroadcast, kBarrier };
  // What each rank brings to the current collective.
  struct Slot {
    Op op = Op::kBarrier;
    const void* send = nullptr;
    void* recv = nullptr;
    int64_t count = 0;       // elements (bytes for Broadcast)
    int64_t recv_count = 0;  // elements of recv (checked on every rank: consistent errors)
    int root = 0;
  };

  explicit LocalCommunicatorGroup(int world_size);
  // Blocks until all ranks arrive; ABORTED if the group is (or becomes) aborted.
  absl::Status ArriveAndWait();
  absl::Status Run(int rank, const Slot& slot);
  // Every rank's slot must agree with rank 0's; the same verdict on every rank.
  absl::Status CheckSlots() const;
  template <typename T>
  void ReduceSlice(int rank, int64_t count);

  const int world_size_;
  std::vector<std::unique_ptr<Communicator>> comms_;

  // std::mutex rather than absl::Mutex: ThreadSanitizer sees pthread synchronisation, not that
  // of the distribution's uninstrumented Abseil, and this is code worth checking with it.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;          // guarded by mu_
  uint64_t generation_ = 0;  // guarded by mu_
  bool aborted_ = false;     // guarded by mu_

  // Written by each rank for its own index before the first barrier of a collective, read by all
  // after it (the barrier orders the accesses).
  std::vector<Slot> slots_;
  // All-reduce result; resized by rank 0 between the first and second barrier of a collective.
  std::vector<std::byte> scratch_;
};

}  // namespace kvc

#endif  // KVC_WORKER_COMMUNICATOR_H_
