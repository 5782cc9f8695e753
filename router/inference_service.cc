#include "router/inference_service.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/validate.h"
#include "router/stop_matcher.h"

namespace kvc {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A status from a worker that means "this worker could not take the call at all": safe to retry
// on another worker when no token was produced yet.
bool Retryable(const grpc::Status& s) { return s.error_code() == grpc::StatusCode::UNAVAILABLE; }

}  // namespace

InferenceService::InferenceService(const Tokenizer* tokenizer, WorkerPool* pool,
                                   RouterOptions options, MetricsRegistry* metrics)
    : tokenizer_(tokenizer), pool_(pool), options_(std::move(options)) {
  if (metrics) {
    requests_ = &metrics->AddCounter("kvc_router_requests_total",
                                     "Generate requests by final gRPC status code.", {"code"});
    rejections_ = &metrics->AddCounter("kvc_router_rejections_total",
                                       "Requests rejected before routing, by reason.", {"reason"});
    retries_ = &metrics
                    ->AddCounter("kvc_router_retries_total",
                                 "Requests retried on another worker before the first token.")
                    .Get();
    ttft_ = &metrics
                 ->AddHistogram("kvc_router_time_to_first_token_seconds",
                                "Arrival at the router to the first token streamed back.",
                                MetricsRegistry::LatencyBuckets())
                 .Get();
    itl_ = &metrics
                ->AddHistogram("kvc_router_inter_token_seconds",
                               "Time between consecutive streamed chunks of a request.",
                               MetricsRegistry::LatencyBuckets())
                .Get();
    e2e_ = &metrics
                ->AddHistogram("kvc_router_request_duration_seconds",
                               "Arrival to the final message of a Generate request.",
                               MetricsRegistry::LatencyBuckets())
                .Get();
    prompt_tokens_ =
        &metrics->AddCounter("kvc_router_prompt_tokens_total", "Prompt tokens of routed requests.")
             .Get();
    generated_tokens_ =
        &metrics
             ->AddCounter("kvc_router_generated_tokens_total", "Tokens streamed back to clients.")
             .Get();
  }
  watcher_ = std::thread([this] { WatchCancellations(); });
}

InferenceService::~InferenceService() {
  {
    absl::MutexLock lock(&watch_mu_);
    stop_watch_ = true;
  }
  watcher_.join();
}

void InferenceService::WatchCancellations() {
  while (true) {
    absl::MutexLock lock(&watch_mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_) { return stop_watch_; };
    if (watch_mu_.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(20))) return;
    for (auto& [server_ctx, client_ctx] : active_) {
      if (server_ctx->IsCancelled()) client_ctx->TryCancel();
    }
  }
}

absl::StatusOr<v1::ModelInfo> InferenceService::ResolveModel(const std::string& requested) const {
  auto model = pool_->Model();
  if (!model) {
    return absl::UnavailableError("no worker has reported its model yet (are any workers up?)");
  }
  const std::string served =
      options_.served_model_name.empty() ? model->name() : options_.served_model_name;
  if (!requested.empty() && requested != served) {
    return absl::NotFoundError(
        absl::StrCat("model: unknown model '", requested, "'; this cluster serves '", served, "'"));
  }
  v1::ModelInfo info = *model;
  info.set_name(served);
  return info;
}

grpc::Status InferenceService::Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status s = GenerateImpl(ctx, req, writer);
  if (requests_) {
    static const char* kCodes[] = {"OK",
                                   "CANCELLED",
                                   "UNKNOWN",
                                   "INVALID_ARGUMENT",
                                   "DEADLINE_EXCEEDED",
                                   "NOT_FOUND",
                                   "ALREADY_EXISTS",
                                   "PERMISSION_DENIED",
                                   "RESOURCE_EXHAUSTED",
                                   "FAILED_PRECONDITION",
                                   "ABORTED",
                                   "OUT_OF_RANGE",
                                   "UNIMPLEMENTED",
                                   "INTERNAL",
                                   "UNAVAILABLE",
                                   "DATA_LOSS",
                                   "UNAUTHENTICATED"};
    int code = static_cast<int>(s.error_code());
    requests_->WithLabels({code >= 0 && code <= 16 ? kCodes[code] : "UNKNOWN"}).Increment();
  }
  if (e2e_) e2e_->Observe(SecondsSince(t0));
  return s;
}

grpc::Status InferenceService::GenerateImpl(grpc::ServerContext* ctx,
                                            const v1::GenerateRequest* req,
                                            grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const auto t0 = std::chrono::steady_clock::now();
  auto reject = [this](const absl::Status& st, const char* reason) {
    if (rejections_) rejections_->WithLabels({reason}).Increment();
    return ToGrpcStatus(st);
  };
  auto model = ResolveModel(req->model());
  if (!model.ok()) {
    return reject(model.status(), model.status().code() == absl::StatusCode::kNotFound
                                      ? "unknown_model"
                                      : "no_worker");
  }

  // Prompt: text (tokenized here) or token ids.
  v1::WorkerGenerateRequest wreq;
  if (!req->prompt().empty() && req->prompt_token_ids_size() > 0) {
    return reject(absl::InvalidArgumentError(
                      "prompt: set exactly one of prompt and prompt_token_ids, not both"),
                  "invalid_argument");
  }
  if (!req->prompt().empty()) {
    const bool add_special = !req->has_add_special_tokens() || req->add_special_tokens();
    auto ids = tokenizer_->Encode(req->prompt(), add_special);
    if (!ids.ok()) return reject(Annotate(ids.status(), "prompt"), "invalid_argument");
    for (int32_t id : *ids) wreq.add_prompt_token_ids(id);
  } else {
    *wreq.mutable_prompt_token_ids() = req->prompt_token_ids();
  }
  absl::Status st =
      ValidatePromptTokens(wreq.prompt_token_ids(), model->max_context(), model->vocab_size());
  if (st.ok()) {
    st = ValidateSampling(req->sampling(), wreq.prompt_token_ids_size(), model->max_context(),
                          model->vocab_size());
  }
  if (st.ok()) st = ValidateCompression(req->compression());
  if (!st.ok()) {
    const bool too_long = wreq.prompt_token_ids_size() >= model->max_context();
    return reject(st, too_long ? "prompt_too_long" : "invalid_argument");
  }
  const std::string request_id =
      req->request_id().empty() ? absl::StrCat("req-", next_id_.fetch_add(1)) : req->request_id();
  wreq.set_request_id(request_id);
  *wreq.mutable_sampling() = req->sampling();
  *wreq.mutable_compression() = req->compression();
  wreq.set_priority(req->priority());
  if (prompt_tokens_) prompt_tokens_->Increment(wreq.prompt_token_ids_size());

  std::vector<int> tried;
  grpc::Status last_error;
  for (int attempt = 0; attempt < std::max(1, options_.max_attempts); ++attempt) {
    auto worker = pool_->Acquire(tried);
    if (!worker.ok()) {
      if (attempt == 0) return reject(worker.status(), "no_worker");
      break;
    }
    WorkerHandle* w = *worker;
    tried.push_back(w->index);
    if (attempt > 0 && retries_) retries_->Increment();

    grpc::ClientContext wctx;
    if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
      wctx.set_deadline(ctx->deadline());
    }
    {
      absl::MutexLock lock(&watch_mu_);
      active_[ctx] = &wctx;
    }
    auto reader = w->worker->Generate(&wctx, wreq);
    StreamDecoder decoder(tokenizer_, /*skip_special_tokens=*/true);
    StopMatcher stops({req->sampling().stop().begin(), req->sampling().stop().end()});
    bool got_any = false;
    bool stopped = false;
    bool client_gone = false;
    int32_t completion_tokens = 0;
    auto last_chunk = t0;
    std::optional<double> first_token_seconds;
    v1::WorkerGenerateResponse wresp;
    while (reader->Read(&wresp)) {
      v1::GenerateResponse out;
      out.set_request_id(request_id);
      out.set_worker(w->address);
      std::string delta;
      for (int32_t tok : wresp.token_ids()) {
        out.add_token_ids(tok);
        completion_tokens++;
        delta += decoder.Push(tok);
      }
      if (wresp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) delta += decoder.Flush();
      std::string text;
      stopped = stops.Feed(delta, &text);
      if (!stopped && wresp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        text += stops.Flush();
      }
      out.set_text(text);
      if (stopped) {
        // The text up to the stop string goes out now; the final message (with the worker's
        // usage) follows once the worker has released the sequence.
      } else if (wresp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        out.set_finish_reason(wresp.finish_reason());
        *out.mutable_usage() = wresp.usage();
        *out.mutable_timings() = wresp.timings();
      }
      const auto now = std::chrono::steady_clock::now();
      if (!got_any) {
        first_token_seconds = std::chrono::duration<double>(now - t0).count();
        if (ttft_) ttft_->Observe(*first_token_seconds);
      } else if (itl_) {
        itl_->Observe(std::chrono::duration<double>(now - last_chunk).count());
      }
      if (out.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        // Router-side timings: what the client saw (the worker's queue time is kept).
        out.mutable_timings()->set_first_token_seconds(first_token_seconds.value_or(0));
        out.mutable_timings()->set_total_seconds(SecondsSince(t0));
      }
      got_any = true;
      last_chunk = now;
      if (generated_tokens_) generated_tokens_->Increment(wresp.token_ids_size());
      if (!writer->Write(out)) {
        client_gone = true;
        wctx.TryCancel();
        break;
      }
      if (stopped) {
        // Abort the sequence on the worker (its blocks are freed) and wait for its final
        // message, which carries the usage (KVs held, compression ratio) of the request.
        grpc::ClientContext actx;
        actx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        v1::AbortRequest abort;
        abort.set_request_id(request_id);
        v1::AbortResponse aresp;
        grpc::Status as = w->worker->Abort(&actx, abort, &aresp);
        if (!as.ok()) wctx.TryCancel();
        v1::GenerateResponse fin;
        fin.set_request_id(request_id);
        fin.set_worker(w->address);
        fin.set_finish_reason(v1::FINISH_REASON_STOP);
        fin.mutable_usage()->set_prompt_tokens(wreq.prompt_token_ids_size());
        fin.mutable_usage()->set_completion_tokens(completion_tokens);
        while (as.ok() && reader->Read(&wresp)) {
          if (wresp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
            *fin.mutable_usage() = wresp.usage();
            *fin.mutable_timings() = wresp.timings();
          }
        }
        // Tokens generated after the stop string are not returned or counted.
        fin.mutable_usage()->set_completion_tokens(completion_tokens);
        fin.mutable_timings()->set_first_token_seconds(first_token_seconds.value_or(0));
        fin.mutable_timings()->set_total_seconds(SecondsSince(t0));
        if (!writer->Write(fin)) client_gone = true;
        break;
      }
    }
    grpc::Status ws = reader->Finish();
    {
      absl::MutexLock lock(&watch_mu_);
      active_.erase(ctx);
    }
    pool_->Release(w);
    if (stopped && !client_gone) return grpc::Status::OK;
    if (client_gone || ctx->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled by the client");
    }
    if (ws.ok()) return ws;
    if (!got_any && Retryable(ws)) {
      KVC_LOG(WARNING) << "worker " << w->address
                       << " failed before the first token: " << ws.error_message()
                       << "; trying another worker";
      pool_->MarkDown(w, ws.error_message());
      last_error = ws;
      continue;
    }
    return grpc::Status(ws.error_code(),
                        absl::StrCat(ws.error_message(), " [worker ", w->address, "]"));
  }
  return grpc::Status(
      grpc::StatusCode::UNAVAILABLE,
      absl::StrCat("no worker could serve the request; last error: ", last_error.error_message()));
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* req,
                                        v1::TokenizeResponse* resp) {
  if (!req->model().empty()) {
    auto model = ResolveModel(req->model());
    if (!model.ok()) return ToGrpcStatus(model.status());
  }
  const bool add_special = !req->has_add_special_tokens() || req->add_special_tokens();
  auto ids = tokenizer_->Encode(req->text(), add_special);
  if (!ids.ok()) return ToGrpcStatus(Annotate(ids.status(), "text"));
  for (int32_t id : *ids) {
    resp->add_token_ids(id);
    resp->add_tokens(tokenizer_->IdToToken(id));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext*,
                                            const v1::GetModelInfoRequest* req,
                                            v1::ModelInfo* resp) {
  auto model = ResolveModel(req->model());
  if (!model.ok()) return ToGrpcStatus(model.status());
  *resp = *model;
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetClusterStatus(grpc::ServerContext*,
                                                const v1::GetClusterStatusRequest*,
                                                v1::ClusterStatus* resp) {
  for (auto& w : pool_->Status()) *resp->add_workers() = std::move(w);
  resp->set_routing_policy("least-loaded");
  return grpc::Status::OK;
}

}  // namespace kvc
