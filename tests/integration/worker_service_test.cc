// Integration: WorkerService + KvManagerService in-process on a loopback gRPC port, driven by
// real gRPC stubs (no router).
#include "worker/worker_service.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvc/v1/kvmanager.grpc.pb.h"
#include "kvc/v1/worker.grpc.pb.h"
#include "kvmanager/kvmanager_service.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto weights = LoadModel("tests/fixtures/models/llama_gqa_llama3");
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto ex = CpuExecutor::Create(*weights, 1024, 16);
    ASSERT_TRUE(ex.ok()) << ex.status();
    KvManagerOptions ko;
    ko.layout = (*ex)->layout();
    auto kv = KvManager::Create(ko);
    ASSERT_TRUE(kv.ok());
    kv_ = kv->get();
    EngineOptions eo;
    eo.check_invariants = true;
    engine_ = std::make_unique<Engine>(std::move(*ex), std::move(*kv), eo, &metrics_);
    engine_->Start();
    worker_ = std::make_unique<WorkerService>(engine_.get(), "fixture", SamplingDefaults{});
    kvsvc_ = std::make_unique<KvManagerService>(kv_, [this] {
      return QueueDepth{engine_->num_running(), engine_->num_waiting()};
    });
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(worker_.get());
    b.RegisterService(kvsvc_.get());
    server_ = b.BuildAndStart();
    ASSERT_GT(port, 0);
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    stub_ = v1::Worker::NewStub(ch);
    kvstub_ = v1::KvManager::NewStub(ch);
  }
  void TearDown() override {
    server_->Shutdown();
    engine_->Stop();
  }

  v1::WorkerGenerateRequest Req(int n_prompt, int max_tokens) {
    v1::WorkerGenerateRequest r;
    for (int i = 0; i < n_prompt; ++i) r.add_prompt_token_ids(5 + i);
    r.mutable_sampling()->set_temperature(0);
    r.mutable_sampling()->set_max_tokens(max_tokens);
    r.mutable_sampling()->set_ignore_eos(true);
    return r;
  }

  MetricsRegistry metrics_;
  KvManager* kv_ = nullptr;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<WorkerService> worker_;
  std::unique_ptr<KvManagerService> kvsvc_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  std::unique_ptr<v1::KvManager::Stub> kvstub_;
};

TEST_F(WorkerServiceTest, StreamsTokensAndReportsUsage) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Req(7, 20));
  v1::WorkerGenerateResponse m;
  int tokens = 0, messages = 0;
  v1::Usage usage;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&m)) {
    messages++;
    tokens += m.token_ids_size();
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      reason = m.finish_reason();
      usage = m.usage();
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 20);
  // One message per generated token; the usage rides on the last one or comes right after it.
  EXPECT_GE(messages, 20);
  EXPECT_LE(messages, 21);
  EXPECT_EQ(reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(usage.prompt_tokens(), 7);
  EXPECT_EQ(usage.completion_tokens(), 20);
  // 7 + 19 tokens cached in 3 layers x 2 kv heads.
  EXPECT_EQ(usage.kvs_uncompressed(), 26 * 6);
  EXPECT_EQ(usage.kvs_held(), 26 * 6);
  EXPECT_DOUBLE_EQ(usage.compression_ratio(), 1.0);
}

TEST_F(WorkerServiceTest, ValidationErrorsNameTheField) {
  struct Case {
    v1::WorkerGenerateRequest req;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({Req(0, 5), "prompt"});
  auto r = Req(3, 5);
  r.set_prompt_token_ids(1, 99999);
  cases.push_back({r, "prompt_token_ids[1]"});
  r = Req(3, 5);
  r.mutable_sampling()->set_top_k(-1);
  cases.push_back({r, "sampling.top_k"});
  r = Req(3, 5);
  r.mutable_sampling()->set_max_tokens(600);
  cases.push_back({r, "sampling.max_tokens"});
  r = Req(3, 5);
  r.mutable_compression()->set_protected_window(-2);
  cases.push_back({r, "compression.protected_window"});
  for (const auto& c : cases) {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, c.req);
    v1::WorkerGenerateResponse m;
    while (reader->Read(&m)) {
    }
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(s.error_message(), HasSubstr(c.field));
  }
}

TEST_F(WorkerServiceTest, ClientCancellationFreesTheBlocks) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Req(30, 450));
  v1::WorkerGenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  ASSERT_TRUE(reader->Read(&m));
  EXPECT_LT(kv_->num_free_blocks(), kv_->num_total_blocks());
  ctx.TryCancel();
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 200 && kv_->num_free_blocks() != kv_->num_total_blocks(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(kv_->num_free_blocks(), kv_->num_total_blocks());
  EXPECT_TRUE(kv_->CheckInvariants().ok());
}

TEST_F(WorkerServiceTest, AbortRpcEndsTheStream) {
  grpc::ClientContext ctx;
  auto req = Req(10, 450);
  req.set_request_id("abort-me");
  auto reader = stub_->Generate(&ctx, req);
  v1::WorkerGenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  grpc::ClientContext actx;
  v1::AbortRequest ar;
  ar.set_request_id("abort-me");
  v1::AbortResponse aresp;
  ASSERT_TRUE(stub_->Abort(&actx, ar, &aresp).ok());
  EXPECT_TRUE(aresp.found());
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&m)) {
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) reason = m.finish_reason();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(reason, v1::FINISH_REASON_ABORT);
  EXPECT_EQ(kv_->num_free_blocks(), kv_->num_total_blocks());
}

TEST_F(WorkerServiceTest, InfoCapacityAndStats) {
  grpc::ClientContext c1;
  v1::WorkerInfo info;
  ASSERT_TRUE(stub_->GetInfo(&c1, v1::GetInfoRequest(), &info).ok());
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_EQ(info.block_size(), 16);
  EXPECT_EQ(info.num_blocks(), 1024);
  EXPECT_EQ(info.model().num_layers(), 3);
  EXPECT_EQ(info.model().num_kv_heads(), 2);
  EXPECT_EQ(info.model().vocab_size(), 384);

  grpc::ClientContext c2;
  v1::KvCapacity cap;
  ASSERT_TRUE(kvstub_->GetCapacity(&c2, v1::GetCapacityRequest(), &cap).ok());
  EXPECT_EQ(cap.total_blocks(), 1024);
  EXPECT_EQ(cap.free_blocks(), 1024);
  // 1024 blocks * 16 / (3 layers * 2 heads) tokens.
  EXPECT_EQ(cap.physical_free_tokens(), 1024 * 16 / 6);
  EXPECT_EQ(cap.effective_free_tokens(), cap.physical_free_tokens());

  grpc::ClientContext c3;
  v1::GetStatsRequest sr;
  sr.set_include_heads(true);
  v1::KvStats stats;
  ASSERT_TRUE(kvstub_->GetStats(&c3, sr, &stats).ok());
  EXPECT_EQ(stats.layers_size(), 3);
  EXPECT_EQ(stats.layers(0).head_kvs_size(), 2);
  EXPECT_EQ(stats.num_kv_heads(), 2);

  std::string text = metrics_.Render();
  EXPECT_THAT(text, HasSubstr("kvc_worker_running_requests"));
}

}  // namespace
}  // namespace kvc
