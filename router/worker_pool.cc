#include "router/worker_pool.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace kvc {

WorkerPool::WorkerPool(std::vector<std::string> addresses, absl::Duration poll_interval,
                       MetricsRegistry* metrics)
    : poll_interval_(poll_interval) {
  for (size_t i = 0; i < addresses.size(); ++i) {
    auto h = std::make_unique<WorkerHandle>();
    h->index = static_cast<int>(i);
    h->address = addresses[i];
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // Reconnect quickly after a worker restart.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    h->channel = grpc::CreateCustomChannel(addresses[i], grpc::InsecureChannelCredentials(), args);
    h->worker = v1::Worker::NewStub(h->channel);
    h->kvmanager = v1::KvManager::NewStub(h->channel);
    handles_.push_back(std::move(h));
  }
  state_.resize(handles_.size());
  if (metrics) {
    up_ = &metrics->AddGauge("kvc_router_worker_up", "1 if the worker answered its last poll.",
                             {"worker"});
    in_flight_ = &metrics->AddGauge("kvc_router_in_flight_requests",
                                    "Requests in flight per worker.", {"worker"});
    effective_ = &metrics->AddGauge("kvc_router_worker_effective_capacity_tokens",
                                    "Worker's effective free KV capacity (tokens) at last poll.",
                                    {"worker"});
  }
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Start() {
  PollOnce();
  poller_ = std::thread([this] { PollLoop(); });
}

void WorkerPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (poller_.joinable()) poller_.join();
}

void WorkerPool::PollLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), poll_interval_)) return;
    }
    PollOnce();
  }
}

void WorkerPool::PollOnce() {
  for (auto& h : handles_) {
    grpc::ClientContext info_ctx;
    info_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::WorkerInfo info;
    grpc::Status s = h->worker->GetInfo(&info_ctx, v1::GetInfoRequest(), &info);
    v1::KvCapacity cap;
    if (s.ok()) {
      grpc::ClientContext cap_ctx;
      cap_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      s = h->kvmanager->GetCapacity(&cap_ctx, v1::GetCapacityRequest(), &cap);
    }
    absl::MutexLock lock(&mu_);
    State& st = state_[h->index];
    const bool was = st.healthy;
    st.healthy = s.ok();
    if (s.ok()) {
      st.info = info;
      st.capacity = cap;
      st.last_error.clear();
    } else {
      st.last_error = absl::StrCat(s.error_message(), " (", s.error_code(), ")");
    }
    if (was != st.healthy) {
      KVC_LOG(INFO) << "worker " << h->address << " is " << (st.healthy ? "up" : "down")
                    << (st.healthy ? "" : ": " + st.last_error);
    }
    if (up_) up_->WithLabels({h->address}).Set(st.healthy ? 1 : 0);
    if (effective_) {
      effective_->WithLabels({h->address})
          .Set(static_cast<double>(st.capacity.effective_free_tokens()));
    }
  }
}

absl::StatusOr<WorkerHandle*> WorkerPool::Acquire(const std::vector<int>& exclude) {
  absl::MutexLock lock(&mu_);
  // Scan from a rotating start so that exact ties (idle workers with equal capacity) are spread
  // round-robin instead of always landing on the first worker.
  const size_t n = handles_.size();
  const size_t start = n ? next_start_++ % n : 0;
  int best = -1;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    if (!state_[i].healthy) continue;
    if (std::find(exclude.begin(), exclude.end(), static_cast<int>(i)) != exclude.end()) continue;
    if (best < 0) {
      best = static_cast<int>(i);
      continue;
    }
    const State& a = state_[i];
    const State& b = state_[best];
    if (a.in_flight < b.in_flight ||
        (a.in_flight == b.in_flight &&
         a.capacity.effective_free_tokens() > b.capacity.effective_free_tokens())) {
      best = static_cast<int>(i);
    }
  }
  if (best < 0) {
    std::vector<std::string> why;
    for (size_t i = 0; i < handles_.size(); ++i) {
      why.push_back(absl::StrCat(handles_[i]->address, ": ",
                                 state_[i].healthy ? "already tried" : state_[i].last_error));
    }
    return absl::UnavailableError(
        absl::StrCat("no worker available (", absl::StrJoin(why, "; "), ")"));
  }
  state_[best].in_flight++;
  if (in_flight_) in_flight_->WithLabels({handles_[best]->address}).Set(state_[best].in_flight);
  return handles_[best].get();
}

void WorkerPool::Release(WorkerHandle* w) {
  absl::MutexLock lock(&mu_);
  state_[w->index].in_flight--;
  if (in_flight_) in_flight_->WithLabels({w->address}).Set(state_[w->index].in_flight);
}

void WorkerPool::MarkDown(WorkerHandle* w, const std::string& error) {
  absl::MutexLock lock(&mu_);
  state_[w->index].healthy = false;
  state_[w->index].last_error = error;
  if (up_) up_->WithLabels({w->address}).Set(0);
}

std::optional<v1::ModelInfo> WorkerPool::Model() const {
  absl::MutexLock lock(&mu_);
  for (const auto& s : state_) {
    if (s.info.has_value()) return s.info->model();
  }
  return std::nullopt;
}

std::vector<v1::WorkerStatus> WorkerPool::Status() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::WorkerStatus> out;
  for (size_t i = 0; i < handles_.size(); ++i) {
    v1::WorkerStatus w;
    w.set_address(handles_[i]->address);
    w.set_healthy(state_[i].healthy);
    w.set_in_flight(state_[i].in_flight);
    if (state_[i].info) {
      w.set_model(state_[i].info->model().name());
      w.set_backend(state_[i].info->backend());
    }
    *w.mutable_capacity() = state_[i].capacity;
    w.set_last_error(state_[i].last_error);
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace kvc
