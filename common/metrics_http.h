// MetricsHttpServer: serves a MetricsRegistry as Prometheus text on GET /metrics (and a liveness
// probe on GET /healthz) over HTTP, on its own threads (cpp-httplib). One per process.
// The registry must outlive the server. Start() returns the bound port (pass 0 for an ephemeral
// one). Stop() is idempotent and also runs in the destructor.
#ifndef KVC_COMMON_METRICS_HTTP_H_
#define KVC_COMMON_METRICS_HTTP_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/metrics.h"

namespace httplib {
class Server;
}

namespace kvc {

class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(const MetricsRegistry* registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds host:port and starts serving. Returns the bound port. UNAVAILABLE if it cannot bind.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  const MetricsRegistry* registry_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

// Fetches http://host:port/path (GET); for tests and tools. Returns the body on HTTP 200.
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path);

}  // namespace kvc

#endif  // KVC_COMMON_METRICS_HTTP_H_
