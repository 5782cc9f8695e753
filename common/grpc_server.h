// ServeUntilSignal: the process skeleton shared by kvc-router and kvc-worker. Binds the gRPC
// services (plus grpc.health.v1 and server reflection) on host:port, serves `metrics` on
// /metrics, writes the ready file, runs `on_serving`, then blocks until SIGINT/SIGTERM
// (BlockShutdownSignals() must have run first in main) and shuts down in order: health goes
// NOT_SERVING, the gRPC server drains for `drain`, `on_shutdown` runs, /metrics stops.
#ifndef KVC_COMMON_GRPC_SERVER_H_
#define KVC_COMMON_GRPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace kvc {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;            // 0 = pick a free port
  int metrics_port = -1;   // -1 = no /metrics, 0 = pick a free port
  std::string ready_file;  // written as {"grpc_port", "metrics_port", "pid"} once serving
  absl::Duration drain = absl::Seconds(5);
};

absl::Status ServeUntilSignal(const ServerOptions& options,
                              const std::vector<grpc::Service*>& services,
                              const MetricsRegistry* metrics,
                              const std::function<void(int grpc_port)>& on_serving,
                              const std::function<void()>& on_shutdown);

}  // namespace kvc

#endif  // KVC_COMMON_GRPC_SERVER_H_
