#include "common/metrics.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "common/check.h"

namespace kvc {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

std::string LabelBlock(const std::vector<std::string>& names,
                       const std::vector<std::string>& values, const std::string& extra_name = "",
                       const std::string& extra_value = "") {
  if (names.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!first) out += ",";
    first = false;
    out += names[i] + "=\"" + EscapeLabelValue(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    if (!first) out += ",";
    out += extra_name + "=\"" + extra_value + "\"";
  }
  out += "}";
  return out;
}

std::string EscapeHelp(const std::string& h) {
  std::string out;
  for (char c : h) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool ValidMetricName(const std::string& n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

}  // namespace

void Counter::Increment(double v) {
  KVC_DCHECK(v >= 0) << "counters only go up";
  AtomicAdd(value_, v);
}

void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  for (size_t i = 1; i < bounds_.size(); ++i) KVC_CHECK_LT(bounds_[i - 1], bounds_[i]);
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  absl::MutexLock lock(&mu_);
  counts_[i]++;
  sum_ += v;
  count_++;
}

Histogram::Snapshot Histogram::snapshot() const {
  absl::MutexLock lock(&mu_);
  Snapshot s;
  uint64_t acc = 0;
  for (uint64_t c : counts_) {
    acc += c;
    s.cumulative.push_back(acc);
  }
  s.sum = sum_;
  s.count = count_;
  return s;
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  // Prefer the shortest representation that round-trips.
  for (int p = 6; p <= 17; ++p) {
    char b2[32];
    std::snprintf(b2, sizeof(b2), "%.*g", p, v);
    if (std::strtod(b2, nullptr) == v) return b2;
  }
  return buf;
}

void MetricsRegistry::CheckName(const std::string& name, const std::string& help) {
  KVC_CHECK(ValidMetricName(name)) << "invalid metric name " << name;
  KVC_CHECK(name.rfind("kvc_", 0) == 0) << "metric " << name << " must start with kvc_";
  KVC_CHECK(!help.empty()) << "metric " << name << " needs help text";
  for (const auto& e : order_) {
    const std::string& n = e.counter ? e.counter->name()
                           : e.gauge ? e.gauge->name()
                                     : e.histogram->name();
    KVC_CHECK(n != name) << "metric " << name << " registered twice";
  }
}

Family<Counter>& MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                             std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckName(name, help);
  counters_.push_back(std::make_unique<Family<Counter>>(
      name, help, std::move(label_names), [] { return std::make_unique<Counter>(); }));
  order_.push_back({"counter", counters_.back().get(), nullptr, nullptr});
  return *counters_.back();
}

Family<Gauge>& MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                         std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckName(name, help);
  gauges_.push_back(std::make_unique<Family<Gauge>>(name, help, std::move(label_names),
                                                    [] { return std::make_unique<Gauge>(); }));
  order_.push_back({"gauge", nullptr, gauges_.back().get(), nullptr});
  return *gauges_.back();
}

Family<Histogram>& MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                                 std::vector<double> bounds,
                                                 std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckName(name, help);
  histograms_.push_back(std::make_unique<Family<Histogram>>(
      name, help, std::move(label_names),
      [bounds] { return std::make_unique<Histogram>(bounds); }));
  order_.push_back({"histogram", nullptr, nullptr, histograms_.back().get()});
  return *histograms_.back();
}

void MetricsRegistry::AddCollector(std::function<void()> collector) {
  absl::MutexLock lock(&mu_);
  collectors_.push_back(std::move(collector));
}

std::vector<double> MetricsRegistry::LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string MetricsRegistry::Render() const {
  std::vector<std::function<void()>> collectors;
  std::vector<Entry> order;
  {
    absl::MutexLock lock(&mu_);
    collectors = collectors_;
    order = order_;
  }
  for (auto& c : collectors) c();
  std::ostringstream out;
  for (const auto& e : order) {
    if (e.counter) {
      const auto& f = *e.counter;
      out << "# HELP " << f.name() << " " << EscapeHelp(f.help()) << "\n";
      out << "# TYPE " << f.name() << " counter\n";
      for (const auto& [labels, c] : f.Children()) {
        out << f.name() << LabelBlock(f.label_names(), labels) << " "
            << FormatMetricValue(c->value()) << "\n";
      }
    } else if (e.gauge) {
      const auto& f = *e.gauge;
      out << "# HELP " << f.name() << " " << EscapeHelp(f.help()) << "\n";
      out << "# TYPE " << f.name() << " gauge\n";
      for (const auto& [labels, g] : f.Children()) {
        out << f.name() << LabelBlock(f.label_names(), labels) << " "
            << FormatMetricValue(g->value()) << "\n";
      }
    } else {
      const auto& f = *e.histogram;
      out << "# HELP " << f.name() << " " << EscapeHelp(f.help()) << "\n";
      out << "# TYPE " << f.name() << " histogram\n";
      for (const auto& [labels, h] : f.Children()) {
        auto s = h->snapshot();
        const auto& b = h->bounds();
        for (size_t i = 0; i <= b.size(); ++i) {
          std::string le = i < b.size() ? FormatMetricValue(b[i]) : "+Inf";
          out << f.name() << "_bucket" << LabelBlock(f.label_names(), labels, "le", le) << " "
              << s.cumulative[i] << "\n";
        }
        out << f.name() << "_sum" << LabelBlock(f.label_names(), labels) << " "
            << FormatMetricValue(s.sum) << "\n";
        out << f.name() << "_count" << LabelBlock(f.label_names(), labels) << " " << s.count
            << "\n";
      }
    }
  }
  return out.str();
}

}  // namespace kvc
