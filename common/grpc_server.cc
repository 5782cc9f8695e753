#include "common/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/metrics_http.h"
#include "common/process.h"
#include "common/status_macros.h"

namespace kvc {

absl::Status ServeUntilSignal(const ServerOptions& options,
                              const std::vector<grpc::Service*>& services,
                              const MetricsRegistry* metrics,
                              const std::function<void(int grpc_port)>& on_serving,
                              const std::function<void()>& on_shutdown) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  const std::string addr = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &bound_port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) return absl::UnavailableError("cannot listen on " + addr);

  MetricsHttpServer metrics_http(metrics);
  int metrics_port = -1;
  if (options.metrics_port >= 0) {
    ASSIGN_OR_RETURN(metrics_port, metrics_http.Start(options.host, options.metrics_port));
  }
  if (on_serving) on_serving(bound_port);
  if (!options.ready_file.empty()) {
    RETURN_IF_ERROR(
        WriteReadyFile(options.ready_file, {{"grpc_port", std::to_string(bound_port)},
                                            {"metrics_port", std::to_string(metrics_port)},
                                            {"pid", std::to_string(getpid())}}));
  }
  int sig = WaitForShutdownSignal();
  KVC_LOG(INFO) << "signal " << sig << ": shutting down";
  server->GetHealthCheckService()->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options.drain));
  if (on_shutdown) on_shutdown();
  metrics_http.Stop();
  return absl::OkStatus();
}

}  // namespace kvc
