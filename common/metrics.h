// A small Prometheus metrics registry with text exposition format 0.0.4.
//
// prometheus-cpp is not packaged for Debian 12, so kvc carries this ~300-line replacement
// (docs/metrics.md says so). It supports what kvc exports: counters, gauges and histograms, each
// a *family* with a fixed list of label names; a child per label-value tuple.
//
//   auto& reqs = registry.AddCounter("kvc_router_requests_total", "Requests by final status.",
//                                    {"status"});
//   reqs.WithLabels({"OK"}).Increment();
//
// Naming: every family must start with `kvc_` and carry help text (checked, CHECK-fails: a bug).
// Thread-safety: all operations are thread-safe. Children are created once and never destroyed,
// so references returned by WithLabels() stay valid for the registry's lifetime; the hot path
// (Increment/Set/Observe) is lock-free apart from histograms' per-child mutex.
// Collectors registered with AddCollector() run before each Render() to refresh gauges computed
// from other components' state (e.g. KV-manager stats), so no metric call sits on a hot path.
#ifndef KVC_COMMON_METRICS_H_
#define KVC_COMMON_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace kvc {

class Counter {
 public:
  void Increment(double v = 1.0);
  // For collectors that mirror a monotonic count owned by another component (e.g. the
  // KV-manager's evicted-KV total): sets the value. Callers guarantee it never decreases.
  void Mirror(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket (non-cumulative), last = +Inf
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// A family of metrics of one type sharing a name, help text and label names.
template <typename T>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::function<std::unique_ptr<T>()> make)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        make_(std::move(make)) {}

  // Returns the child for these label values (created on first use). The number of values must
  // equal the number of label names (CHECK).
  T& WithLabels(const std::vector<std::string>& values);
  // The child with no labels (for families declared without label names).
  T& Get() { return WithLabels({}); }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Snapshot of (label values, child) pairs in label order.
  std::vector<std::pair<std::vector<std::string>, const T*>> Children() const;

 private:
  const std::string name_, help_;
  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<T>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});
  // Runs before every Render(); used to copy other components' state into gauges.
  void AddCollector(std::function<void()> collector);

  // Text exposition format 0.0.4 of every family, in registration order.
  std::string Render() const;

  // Standard latency buckets in seconds (1 ms .. 60 s).
  static std::vector<double> LatencyBuckets();

 private:
  void CheckName(const std::string& name, const std::string& help);

  mutable absl::Mutex mu_;
  struct Entry {
    std::string type;
    Family<Counter>* counter = nullptr;
    Family<Gauge>* gauge = nullptr;
    Family<Histogram>* histogram = nullptr;
  };
  std::vector<Entry> order_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Family<Counter>>> counters_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Family<Gauge>>> gauges_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Family<Histogram>>> histograms_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> collectors_ ABSL_GUARDED_BY(mu_);
};

// Escapes a label value for the text format (backslash, double quote, newline).
std::string EscapeLabelValue(const std::string& v);
// Formats a sample value as Prometheus does (+Inf, -Inf, NaN, shortest round-trip otherwise).
std::string FormatMetricValue(double v);

// ---- implementation details ----
template <typename T>
T& Family<T>::WithLabels(const std::vector<std::string>& values) {
  absl::MutexLock lock(&mu_);
  if (values.size() != label_names_.size()) {
    // Programmer error: wrong arity for this family.
    std::abort();
  }
  auto& slot = children_[values];
  if (!slot) slot = make_();
  return *slot;
}

template <typename T>
std::vector<std::pair<std::vector<std::string>, const T*>> Family<T>::Children() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::vector<std::string>, const T*>> out;
  out.reserve(children_.size());
  for (const auto& [k, v] : children_) out.emplace_back(k, v.get());
  return out;
}

}  // namespace kvc

#endif  // KVC_COMMON_METRICS_H_
