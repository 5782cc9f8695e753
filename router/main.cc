// kvc-router: the public entry point (kvc.v1.Inference). Tokenizes, validates, routes to
// kvc-worker processes, streams text back; grpc.health.v1 and Prometheus /metrics.

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_server.h"
#include "common/logging.h"
#include "common/metrics.h"
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

  ServerOptions so;
  so.host = absl::GetFlag(FLAGS_host);
  so.port = absl::GetFlag(FLAGS_port);
  so.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  so.ready_file = absl::GetFlag(FLAGS_ready_file);
  return ServeUntilSignal(
      so, {&service}, &metrics,
      [&](int port) {
        KVC_LOG(INFO) << "kvc-router on " << so.host << ":" << port << " routing to "
                      << addresses.size() << " worker(s)";
      },
      [&] { pool.Stop(); });
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
