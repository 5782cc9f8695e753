// InferenceService: the public kvc.v1.Inference API. Tokenizes and validates requests, routes
// them to a worker (WorkerPool), streams detokenized text back, applies stop strings, retries on
// another worker when one fails before its first token, and propagates client cancellation to
// the worker (which then frees the sequence's KV blocks). gRPC glue over domain objects; the
// tokenizer and pool must outlive it. Thread-safe.
#ifndef KVC_ROUTER_INFERENCE_SERVICE_H_
#define KVC_ROUTER_INFERENCE_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "kvc/v1/inference.grpc.pb.h"
#include "model/tokenizer.h"
#include "router/worker_pool.h"

namespace kvc {

struct RouterOptions {
  // Name clients may use in `model` (empty = the name the workers report).
  std::string served_model_name;
  // Attempts on different workers before the first token (1 = no retry).
  int max_attempts = 3;
};

class InferenceService final : public v1::Inference::Service {
 public:
  InferenceService(const Tokenizer* tokenizer, WorkerPool* pool, RouterOptions options,
                   MetricsRegistry* metrics);
  ~InferenceService() override;

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const v1::TokenizeRequest* req,
                        v1::TokenizeResponse* resp) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest* req,
                            v1::ModelInfo* resp) override;
  grpc::Status GetClusterStatus(grpc::ServerContext* ctx, const v1::GetClusterStatusRequest* req,
                                v1::ClusterStatus* resp) override;

 private:
  // Resolves the model (NOT_FOUND for a name this cluster does not serve).
  absl::StatusOr<v1::ModelInfo> ResolveModel(const std::string& requested) const;
  grpc::Status GenerateImpl(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                            grpc::ServerWriter<v1::GenerateResponse>* writer);
  void WatchCancellations();

  const Tokenizer* tokenizer_;
  WorkerPool* pool_;
  const RouterOptions options_;
  std::atomic<uint64_t> next_id_{1};

  // Cancellation propagation: server context -> the worker call's client context.
  absl::Mutex watch_mu_;
  std::map<grpc::ServerContext*, grpc::ClientContext*> active_ ABSL_GUARDED_BY(watch_mu_);
  bool stop_watch_ ABSL_GUARDED_BY(watch_mu_) = false;
  std::thread watcher_;

  Family<Counter>* requests_ = nullptr;
  Family<Counter>* rejections_ = nullptr;
  Counter* retries_ = nullptr;
  Histogram* ttft_ = nullptr;
  Histogram* itl_ = nullptr;
  Histogram* e2e_ = nullptr;
  Counter* prompt_tokens_ = nullptr;
  Counter* generated_tokens_ = nullptr;
};

}  // namespace kvc

#endif  // KVC_ROUTER_INFERENCE_SERVICE_H_
