// kvc-router: the public entry point (kvc.v1.Inference). Tokenizes, validates, routes to
// kvc-worker processes, streams text back; grpc.health.v1 and Prometheus /metrics.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "common/process.h"
#include "common/status_macros.h"
#include "model/tokenizer.h"
#include "router/inference_service.h"
#include "router/worker_pool.h"

ABSL_FLAG(std::string, workers, "127.0.0.1:50061", "Comma-separated worker addresses.");
ABSL_FLAG(std::string, tokenizer, "models/kvc-ref/tokenizer.json",
          "tokenizer.json of the served model.");
ABSL_FLAG(std::string, served_model_name, "",
          "Model name clients use (default: the name the workers report).");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to bind (0.0.0.0 in containers).");
ABSL_FLAG(int, port, 50051, "gRPC port (0 = pick a free one; see --ready_file).");
ABSL_FLAG(int, metrics_port, 9451, "Prometheus /metrics port (0 = pick a free one, -1 = off).");
ABSL_FLAG(int, poll_interval_ms, 1000, "Worker health/capacity poll interval.");
ABSL_FLAG(int, max_attempts, 3, "Workers tried for one request before its first token.");
ABSL_FLAG(std::string, ready_file, "", "Write the bound ports here as JSON once serving.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");

namespace kvc {
namespace {

absl::Status Run() {
  auto level = ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  RETURN_IF_ERROR(level.status());
  SetMinLogLevel(*level);

  std::vector<std::string> addresses =
      absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipWhitespace());
  if (addresses.empty()) return absl::InvalidArgumentError("--workers: no worker addresses");
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(absl::GetFlag(FLAGS_tokenizer)));
  if (absl::GetFlag(FLAGS_poll_interval_ms) < 10) {
    return absl::InvalidArgumentError("--poll_interval_ms must be >= 10");
  }

  MetricsRegistry metrics;
  WorkerPool pool(addresses, absl::Milliseconds(absl::GetFlag(FLAGS_poll_interval_ms)), &metrics);
  pool.Start();
  RouterOptions options;
  options.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  InferenceService service(tokenizer.get(), &pool, options, &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  const std::string addr =
      absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) return absl::UnavailableError("cannot listen on " + addr);

  MetricsHttpServer metrics_http(&metrics);
  int metrics_port = -1;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    ASSIGN_OR_RETURN(metrics_port, metrics_http.Start(absl::GetFlag(FLAGS_host),
                                                      absl::GetFlag(FLAGS_metrics_port)));
  }
  KVC_LOG(INFO) << "kvc-router on " << absl::GetFlag(FLAGS_host) << ":" << bound_port
                << " routing to " << addresses.size() << " worker(s)";
  if (!absl::GetFlag(FLAGS_ready_file).empty()) {
    RETURN_IF_ERROR(WriteReadyFile(absl::GetFlag(FLAGS_ready_file),
                                   {{"grpc_port", std::to_string(bound_port)},
                                    {"metrics_port", std::to_string(metrics_port)},
                                    {"pid", std::to_string(getpid())}}));
  }
  int sig = WaitForShutdownSignal();
  KVC_LOG(INFO) << "signal " << sig << ": shutting down";
  server->GetHealthCheckService()->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  pool.Stop();
  metrics_http.Stop();
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  kvc::BlockShutdownSignals();
  absl::SetProgramUsageMessage("kvc-router --workers HOST:PORT[,HOST:PORT...] --tokenizer FILE");
  absl::ParseCommandLine(argc, argv);
  absl::Status st = kvc::Run();
  if (!st.ok()) {
    KVC_LOG(ERROR) << "kvc-router: " << st;
    return 1;
  }
  return 0;
}
