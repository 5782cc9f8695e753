#include "common/metrics_http.h"

#include <httplib.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvc {

MetricsHttpServer::MetricsHttpServer(const MetricsRegistry* registry) : registry_(registry) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port) {
  if (server_) return absl::FailedPreconditionError("metrics server already started");
  server_ = std::make_unique<httplib::Server>();
  const MetricsRegistry* registry = registry_;
  server_->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
    if (bound < 0) {
      server_.reset();
      return absl::UnavailableError(absl::StrCat("metrics: cannot bind ", host, ":0"));
    }
  } else if (!server_->bind_to_port(host, port)) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat("metrics: cannot bind ", host, ":", port));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  KVC_LOG(INFO) << "metrics on http://" << host << ":" << bound << "/metrics";
  return bound;
}

void MetricsHttpServer::Stop() {
  if (!server_) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path) {
  httplib::Client cli(host, port);
  cli.set_connection_timeout(5);
  cli.set_read_timeout(10);
  auto res = cli.Get(path);
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("GET http://", host, ":", port, path, ": ", httplib::to_string(res.error())));
  }
  if (res->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET http://", host, ":", port, path, ": HTTP ", res->status));
  }
  return res->body;
}

}  // namespace kvc
