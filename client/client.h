// kvc::Client: the C++ SDK for kvc's public gRPC API (kvc.v1.Inference, served by kvc-router).
//
//   ASSIGN_OR_RETURN(auto client, kvc::Client::Connect("127.0.0.1:50051"));
//   v1::GenerateRequest req;
//   req.set_prompt("Once upon a time");
//   req.mutable_sampling()->set_max_tokens(32);
//   // Streaming: the callback sees every chunk; return false to cancel the request.
//   auto result = client->Generate(req, [](const v1::GenerateResponse& r) {
//     std::cout << r.text() << std::flush;
//     return true;
//   });
//   // Unary: the whole result at once.
//   auto full = client->Generate(req);
//
// Errors are absl::Status with the server's gRPC code and message (INVALID_ARGUMENT names the
// field). A Client is thread-safe: share one per process; each call has its own context.
#ifndef KVC_CLIENT_CLIENT_H_
#define KVC_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvc/v1/inference.grpc.pb.h"

namespace kvc {

struct ClientOptions {
  // Per-call deadline; infinite when zero.
  absl::Duration timeout = absl::ZeroDuration();
  // Wait for the server to be reachable at Connect() (returns UNAVAILABLE after this long).
  absl::Duration connect_timeout = absl::Seconds(5);
};

struct GenerateResult {
  std::string request_id;
  std::string text;
  std::vector<int32_t> token_ids;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  v1::Timings timings;
  std::string worker;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& address,
                                                         ClientOptions options = {});

  using ChunkCallback = std::function<bool(const v1::GenerateResponse&)>;
  // Streams a generation. `on_chunk` runs on the calling thread for every message; returning
  // false cancels the request (the result is then CANCELLED).
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request,
                                          const ChunkCallback& on_chunk);
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request);

  absl::StatusOr<v1::TokenizeResponse> Tokenize(const std::string& text,
                                                bool add_special_tokens = true);
  absl::StatusOr<v1::ModelInfo> GetModelInfo(const std::string& model = "");
  absl::StatusOr<v1::ClusterStatus> GetClusterStatus();

  const std::string& address() const { return address_; }

 private:
  Client(std::string address, ClientOptions options, std::shared_ptr<grpc::Channel> channel);
  void PrepareContext(grpc::ClientContext* ctx) const;

  const std::string address_;
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

}  // namespace kvc

#endif  // KVC_CLIENT_CLIENT_H_
