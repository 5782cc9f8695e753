// WorkerService: gRPC glue (kvc.v1.Worker) over the Engine. Converts and validates requests,
// streams engine outputs, and turns client cancellation into Engine::Abort (so the sequence's
// KV blocks are returned). Thread-safety: gRPC calls it from many threads; the Engine is
// thread-safe for Submit/Abort.
#ifndef KVC_WORKER_WORKER_SERVICE_H_
#define KVC_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <string>

#include "kvc/v1/worker.grpc.pb.h"
#include "worker/engine.h"

namespace kvc {

// Server-side defaults for unset sampling fields.
struct SamplingDefaults {
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  int32_t max_tokens = 256;
};

// Server-side defaults for unset compression fields (the worker's --compression_* flags).
struct CompressionDefaults {
  CompressionPolicyKind policy = CompressionPolicyKind::kKvCompress;
  CompressionSettings settings;  // mode kNone: no budget unless the request sets one
  int32_t observation_window = 32;
  bool continual = true;
};

// Resolves a request's compression fields against the defaults into `out` (policy, settings,
// observation window, continual). INVALID_ARGUMENT naming the field.
absl::Status ResolveCompression(const v1::CompressionParams& c, const CompressionDefaults& d,
                                const KvLayout& layout, EngineRequest* out);

class WorkerService final : public v1::Worker::Service {
 public:
  WorkerService(Engine* engine, std::string model_name, SamplingDefaults defaults,
                CompressionDefaults compression = {});

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::WorkerGenerateRequest* req,
                        grpc::ServerWriter<v1::WorkerGenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* ctx, const v1::AbortRequest* req,
                     v1::AbortResponse* resp) override;
  grpc::Status GetInfo(grpc::ServerContext* ctx, const v1::GetInfoRequest* req,
                       v1::WorkerInfo* resp) override;

  // Builds the public ModelInfo of the served model.
  static v1::ModelInfo MakeModelInfo(const ModelConfig& cfg, const std::string& name);

 private:
  Engine* engine_;
  const std::string model_name_;
  const SamplingDefaults defaults_;
  const CompressionDefaults compression_;
  std::atomic<uint64_t> next_id_{1};
};

v1::FinishReason ToProto(FinishReason r);

}  // namespace kvc

#endif  // KVC_WORKER_WORKER_SERVICE_H_
