// WorkerPool: the router's view of its kvc-worker processes. Owns one gRPC channel per worker,
// polls each worker's GetInfo + KvManager.GetCapacity every `poll_interval` (that is the health
// check: a worker that does not answer is marked down), counts in-flight requests per worker,
// and picks a worker for a new request.
//
// Routing policy "least-loaded": among healthy workers, fewest in-flight requests; ties go to
// the most effective free KV capacity (tokens that still fit at the worker's current compression
// ratio), then round-robin. Thread-safe.
#ifndef KVC_ROUTER_WORKER_POOL_H_
#define KVC_ROUTER_WORKER_POOL_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "kvc/v1/kvmanager.grpc.pb.h"
#include "kvc/v1/worker.grpc.pb.h"

namespace kvc {

struct WorkerHandle {
  int index = 0;
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Worker::Stub> worker;
  std::unique_ptr<v1::KvManager::Stub> kvmanager;
};

class WorkerPool {
 public:
  WorkerPool(std::vector<std::string> addresses, absl::Duration poll_interval,
             MetricsRegistry* metrics);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Polls every worker once (synchronously), then starts the background poller.
  void Start();
  void Stop();

  // Picks a healthy worker not in `exclude` and counts a request in flight on it (release with
  // Release()). UNAVAILABLE, naming every worker and its last error, when none is healthy.
  absl::StatusOr<WorkerHandle*> Acquire(const std::vector<int>& exclude);
  void Release(WorkerHandle* w);
  // Marks a worker down after a failed call (the poller brings it back).
  void MarkDown(WorkerHandle* w, const std::string& error);

  // The model served by the first healthy worker that reported one.
  std::optional<v1::ModelInfo> Model() const;
  // Status of every worker.
  std::vector<v1::WorkerStatus> Status() const;
  size_t size() const { return handles_.size(); }

 private:
  struct State {
    bool healthy = false;
    int32_t in_flight = 0;
    std::optional<v1::WorkerInfo> info;
    v1::KvCapacity capacity;
    std::string last_error = "not polled yet";
  };
  void PollOnce();
  void PollLoop();

  std::vector<std::unique_ptr<WorkerHandle>> handles_;
  const absl::Duration poll_interval_;
  mutable absl::Mutex mu_;
  std::vector<State> state_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  size_t next_start_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread poller_;
  Family<Gauge>* up_ = nullptr;
  Family<Gauge>* in_flight_ = nullptr;
  Family<Gauge>* effective_ = nullptr;
};

}  // namespace kvc

#endif  // KVC_ROUTER_WORKER_POOL_H_
