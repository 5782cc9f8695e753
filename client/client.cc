#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace kvc {

Client::Client(std::string address, ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : address_(std::move(address)),
      options_(options),
      channel_(std::move(channel)),
      stub_(v1::Inference::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& address,
                                                        ClientOptions options) {
  if (address.empty()) return absl::InvalidArgumentError("address: must not be empty");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  if (options.connect_timeout > absl::ZeroDuration()) {
    auto deadline =
        std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options.connect_timeout);
    if (!channel->WaitForConnected(deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot connect to kvc-router at ", address,
                                                 " within ",
                                                 absl::FormatDuration(options.connect_timeout)));
    }
  }
  return std::unique_ptr<Client>(new Client(address, options, std::move(channel)));
}

void Client::PrepareContext(grpc::ClientContext* ctx) const {
  if (options_.timeout > absl::ZeroDuration()) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      absl::ToChronoMilliseconds(options_.timeout));
  }
}

absl::StatusOr<GenerateResult> Client::Generate(const v1::GenerateRequest& request,
                                                const ChunkCallback& on_chunk) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  auto reader = stub_->Generate(&ctx, request);
  GenerateResult result;
  v1::GenerateResponse resp;
  bool cancelled = false;
  while (reader->Read(&resp)) {
    result.request_id = resp.request_id();
    result.text += resp.text();
    result.token_ids.insert(result.token_ids.end(), resp.token_ids().begin(),
                            resp.token_ids().end());
    result.worker = resp.worker();
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = resp.finish_reason();
      result.usage = resp.usage();
      result.timings = resp.timings();
    }
    if (on_chunk && !on_chunk(resp)) {
      cancelled = true;
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (cancelled) return absl::CancelledError("cancelled by the caller");
  if (!s.ok()) return FromGrpcStatus(s);
  return result;
}

absl::StatusOr<GenerateResult> Client::Generate(const v1::GenerateRequest& request) {
  return Generate(request, ChunkCallback());
}

absl::StatusOr<v1::TokenizeResponse> Client::Tokenize(const std::string& text,
                                                      bool add_special_tokens) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::TokenizeRequest req;
  req.set_text(text);
  req.set_add_special_tokens(add_special_tokens);
  v1::TokenizeResponse resp;
  grpc::Status s = stub_->Tokenize(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::ModelInfo> Client::GetModelInfo(const std::string& model) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::GetModelInfoRequest req;
  req.set_model(model);
  v1::ModelInfo resp;
  grpc::Status s = stub_->GetModelInfo(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<v1::ClusterStatus> Client::GetClusterStatus() {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::ClusterStatus resp;
  grpc::Status s = stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

}  // namespace kvc
