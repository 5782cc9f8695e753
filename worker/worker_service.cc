#include "worker/worker_service.h"

#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "proto/validate.h"

namespace kvc {
namespace {

// Hand-off of engine outputs (engine thread) to the RPC thread.
class OutputQueue {
 public:
  void Push(EngineOutput o) {
    absl::MutexLock lock(&mu_);
    q_.push_back(std::move(o));
  }
  // Waits up to `timeout` for outputs and takes all of them.
  std::deque<EngineOutput> PopAll(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !q_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    std::deque<EngineOutput> out;
    out.swap(q_);
    return out;
  }

 private:
  absl::Mutex mu_;
  std::deque<EngineOutput> q_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kAbort:
      return v1::FINISH_REASON_ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

WorkerService::WorkerService(Engine* engine, std::string model_name, SamplingDefaults defaults,
                             CompressionDefaults compression)
    : engine_(engine),
      model_name_(std::move(model_name)),
      defaults_(defaults),
      compression_(compression) {}

absl::Status ResolveCompression(const v1::CompressionParams& c, const CompressionDefaults& d,
                                const KvLayout& layout, EngineRequest* out) {
  switch (c.policy()) {
    case v1::COMPRESSION_POLICY_UNSPECIFIED:
      out->policy = d.policy;
      break;
    case v1::COMPRESSION_POLICY_NONE:
      out->policy = CompressionPolicyKind::kNone;
      break;
    case v1::COMPRESSION_POLICY_KVCOMPRESS:
      out->policy = CompressionPolicyKind::kKvCompress;
      break;
    case v1::COMPRESSION_POLICY_SNAPKV:
      out->policy = CompressionPolicyKind::kSnapKv;
      break;
    case v1::COMPRESSION_POLICY_PYRAMIDKV:
      out->policy = CompressionPolicyKind::kPyramidKv;
      break;
    case v1::COMPRESSION_POLICY_STREAMING:
      out->policy = CompressionPolicyKind::kStreaming;
      break;
    case v1::COMPRESSION_POLICY_RANDOM:
      out->policy = CompressionPolicyKind::kRandom;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("compression.policy: unknown policy ", c.policy()));
  }
  CompressionOverrides o;
  if (c.budget_case() == v1::CompressionParams::kCompressionRate) {
    o.compression_rate = c.compression_rate();
  } else if (c.budget_case() == v1::CompressionParams::kMaxCacheTokens) {
    o.max_cache_tokens = c.max_cache_tokens();
  }
  if (c.has_protected_window()) o.protected_window = c.protected_window();
  if (c.has_sink_tokens()) o.sink_tokens = c.sink_tokens();
  if (c.has_min_kvs_per_head()) o.min_kvs_per_head = c.min_kvs_per_head();
  auto settings = ResolveCompressionSettings(d.settings, o, layout);
  if (!settings.ok()) {
    const std::string msg(settings.status().message());
    return absl::Status(settings.status().code(),
                        msg.rfind("compression", 0) == 0 ? msg : "compression." + msg);
  }
  out->compression = *settings;
  out->observation_window =
      c.has_observation_window() ? c.observation_window() : d.observation_window;
  out->continual = c.has_continual() ? c.continual() : d.continual;
  return absl::OkStatus();
}

v1::ModelInfo WorkerService::MakeModelInfo(const ModelConfig& cfg, const std::string& name) {
  v1::ModelInfo m;
  m.set_name(name);
  m.set_architecture(cfg.architecture);
  m.set_vocab_size(cfg.vocab_size);
  m.set_max_context(cfg.max_position_embeddings);
  m.set_num_layers(cfg.num_hidden_layers);
  m.set_num_attention_heads(cfg.num_attention_heads);
  m.set_num_kv_heads(cfg.num_key_value_heads);
  m.set_head_dim(cfg.head_dim);
  m.set_hidden_size(cfg.hidden_size);
  return m;
}

grpc::Status WorkerService::Generate(grpc::ServerContext* ctx, const v1::WorkerGenerateRequest* req,
                                     grpc::ServerWriter<v1::WorkerGenerateResponse>* writer) {
  const ModelConfig& cfg = engine_->executor().config();
  absl::Status st =
      ValidatePromptTokens(req->prompt_token_ids(), cfg.max_position_embeddings, cfg.vocab_size);
  if (st.ok()) {
    st = ValidateSampling(req->sampling(), req->prompt_token_ids_size(),
                          cfg.max_position_embeddings, cfg.vocab_size);
  }
  if (st.ok()) st = ValidateCompression(req->compression());
  if (!st.ok()) return ToGrpcStatus(st);

  EngineRequest er;
  er.request_id = req->request_id().empty() ? absl::StrCat("worker-", next_id_.fetch_add(1))
                                            : req->request_id();
  er.prompt.assign(req->prompt_token_ids().begin(), req->prompt_token_ids().end());
  const auto& s = req->sampling();
  er.sampling.temperature = s.has_temperature() ? s.temperature() : defaults_.temperature;
  er.sampling.top_p = s.has_top_p() ? s.top_p() : defaults_.top_p;
  er.sampling.top_k = s.has_top_k() ? s.top_k() : defaults_.top_k;
  if (s.has_seed()) er.seed = s.seed();
  er.max_tokens = s.has_max_tokens() ? s.max_tokens() : defaults_.max_tokens;
  er.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  er.ignore_eos = s.has_ignore_eos() && s.ignore_eos();
  er.priority = req->priority();
  st = ResolveCompression(req->compression(), compression_, engine_->kv_manager().layout(), &er);
  if (!st.ok()) return ToGrpcStatus(st);
  const std::string id = er.request_id;

  auto queue = std::make_shared<OutputQueue>();
  st = engine_->Submit(std::move(er), [queue](EngineOutput o) { queue->Push(std::move(o)); });
  if (!st.ok()) return ToGrpcStatus(st);

  bool abort_sent = false;
  bool client_gone = false;
  while (true) {
    auto outs = queue->PopAll(absl::Milliseconds(50));
    if (!abort_sent && ctx->IsCancelled()) {
      // The caller went away: stop generating and return the blocks. We still wait for the
      // engine's final output so the sequence is fully released before the RPC ends.
      engine_->Abort(id);
      abort_sent = true;
      client_gone = true;
    }
    if (outs.empty()) continue;
    // One message per engine step (its token), so streaming granularity does not depend on how
    // quickly this thread is scheduled; the final output (usage) rides on the last token's
    // message when both are already queued.
    for (size_t i = 0; i < outs.size(); ++i) {
      const EngineOutput& o = outs[i];
      v1::WorkerGenerateResponse resp;
      for (int32_t t : o.tokens) resp.add_token_ids(t);
      const EngineOutput* final_out = o.finished ? &o : nullptr;
      if (!final_out && i + 1 < outs.size() && outs[i + 1].finished &&
          outs[i + 1].tokens.empty()) {
        final_out = &outs[++i];
      }
      if (final_out) {
        if (!final_out->status.ok()) return ToGrpcStatus(final_out->status);
        resp.set_finish_reason(ToProto(final_out->reason));
        auto* u = resp.mutable_usage();
        u->set_prompt_tokens(final_out->usage.prompt_tokens);
        u->set_completion_tokens(final_out->usage.completion_tokens);
        u->set_kvs_held(final_out->usage.kvs_held);
        u->set_kvs_uncompressed(final_out->usage.kvs_uncompressed);
        u->set_compression_ratio(final_out->usage.compression_ratio);
        u->set_preemptions(final_out->usage.preemptions);
        u->set_compressions(final_out->usage.compressions);
        auto* t = resp.mutable_timings();
        t->set_queue_seconds(final_out->timings.queue_seconds);
        t->set_first_token_seconds(final_out->timings.first_token_seconds);
        t->set_total_seconds(final_out->timings.total_seconds);
      }
      if (!client_gone && !writer->Write(resp)) {
        if (!abort_sent) engine_->Abort(id);
        abort_sent = true;
        client_gone = true;
      }
      if (final_out) {
        if (client_gone) return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
        return grpc::Status::OK;
      }
    }
  }
}

grpc::Status WorkerService::Abort(grpc::ServerContext*, const v1::AbortRequest* req,
                                  v1::AbortResponse* resp) {
  resp->set_found(engine_->Abort(req->request_id()));
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                                    v1::WorkerInfo* resp) {
  const Executor& ex = engine_->executor();
  *resp->mutable_model() = MakeModelInfo(ex.config(), model_name_);
  resp->set_backend(ex.backend());
  resp->set_block_size(ex.layout().block_size);
  resp->set_num_blocks(ex.layout().num_blocks);
  resp->set_max_num_seqs(engine_->options().max_num_seqs);
  resp->set_version("0.1.0");
  resp->set_tensor_parallel(1);
  return grpc::Status::OK;
}

}  // namespace kvc
