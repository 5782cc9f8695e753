// End-to-end: real kvc-router and kvc-worker processes on loopback ports, driven through the C++
// SDK, the kvc CLI, plain HTTP (/metrics) and a real Prometheus server.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/metrics_http.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvc/v1/kvmanager.grpc.pb.h"
#include "tests/e2e/process.h"

namespace kvc {
namespace {

using ::kvc::testing::BinDir;
using ::kvc::testing::ChildProcess;
using ::kvc::testing::MakeTempDir;
using ::kvc::testing::SourceDir;
using ::testing::HasSubstr;

// The model every e2e test serves (a real checkpoint + tokenizer.json from the repo).
std::string ModelDir() { return SourceDir() + "/" + KVC_E2E_MODEL_DIR; }

struct Endpoint {
  int grpc_port = 0;
  int metrics_port = 0;
  std::string address() const { return absl::StrCat("127.0.0.1:", grpc_port); }
};

absl::StatusOr<Endpoint> StartProcess(ChildProcess* out, const std::string& dir,
                                      const std::string& name, std::vector<std::string> argv) {
  std::string ready = dir + "/" + name + ".ready";
  argv.push_back("--ready_file=" + ready);
  argv.push_back("--host=127.0.0.1");
  argv.push_back("--port=0");
  argv.push_back("--metrics_port=0");
  auto p = ChildProcess::Start(argv, dir + "/" + name + ".log");
  if (!p.ok()) return p.status();
  auto r = p->WaitReady(ready, absl::Seconds(60));
  if (!r.ok()) return r.status();
  *out = std::move(*p);
  Endpoint e;
  e.grpc_port = std::stoi((*r)["grpc_port"]);
  e.metrics_port = std::stoi((*r)["metrics_port"]);
  return e;
}

absl::StatusOr<Endpoint> StartWorker(ChildProcess* out, const std::string& dir,
                                     const std::string& name, int64_t num_blocks) {
  return StartProcess(out, dir, name,
                      {BinDir() + "/kvc-worker", "--model_dir=" + ModelDir(), "--backend=cpu",
                       absl::StrCat("--num_blocks=", num_blocks), "--check_invariants=true"});
}

absl::StatusOr<Endpoint> StartRouter(ChildProcess* out, const std::string& dir,
                                     const std::vector<Endpoint>& workers,
                                     const std::string& extra_workers = "") {
  std::string list;
  for (const auto& w : workers) list += (list.empty() ? "" : ",") + w.address();
  if (!extra_workers.empty()) list += (list.empty() ? "" : ",") + extra_workers;
  return StartProcess(out, dir, "router",
                      {BinDir() + "/kvc-router", "--workers=" + list,
                       "--tokenizer=" + ModelDir() + "/tokenizer.json", "--poll_interval_ms=200"});
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("kvc-e2e-"));
    worker_procs_ = new std::vector<ChildProcess>(2);
    workers_ = new std::vector<Endpoint>;
    for (int i = 0; i < 2; ++i) {
      auto e = StartWorker(&(*worker_procs_)[i], *dir_, absl::StrCat("worker", i), 2048);
      ASSERT_TRUE(e.ok()) << e.status();
      workers_->push_back(*e);
    }
    router_proc_ = new ChildProcess;
    auto r = StartRouter(router_proc_, *dir_, *workers_);
    ASSERT_TRUE(r.ok()) << r.status();
    router_ = new Endpoint(*r);
    // Wait until the router has polled both workers.
    auto c = Client::Connect(router_->address());
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 100; ++i) {
      auto st = (*c)->GetClusterStatus();
      if (st.ok() && st->workers_size() == 2 && st->workers(0).healthy() &&
          st->workers(1).healthy()) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL() << "workers never became healthy";
  }

  static void TearDownTestSuite() {
    delete router_proc_;
    delete worker_procs_;
    delete workers_;
    delete router_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  std::unique_ptr<Client> Connect() {
    auto c = Client::Connect(router_->address());
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  static v1::GenerateRequest Greedy(const std::string& prompt, int max_tokens) {
    v1::GenerateRequest r;
    r.set_prompt(prompt);
    r.mutable_sampling()->set_temperature(0);
    r.mutable_sampling()->set_max_tokens(max_tokens);
    r.mutable_sampling()->set_ignore_eos(true);
    return r;
  }

  static v1::KvCapacity WorkerCapacity(const Endpoint& w) {
    auto ch = grpc::CreateChannel(w.address(), grpc::InsecureChannelCredentials());
    auto stub = v1::KvManager::NewStub(ch);
    grpc::ClientContext ctx;
    v1::KvCapacity cap;
    EXPECT_TRUE(stub->GetCapacity(&ctx, v1::GetCapacityRequest(), &cap).ok());
    return cap;
  }

  static std::string* dir_;
  static std::vector<ChildProcess>* worker_procs_;
  static std::vector<Endpoint>* workers_;
  static ChildProcess* router_proc_;
  static Endpoint* router_;
};

std::string* ClusterTest::dir_ = nullptr;
std::vector<ChildProcess>* ClusterTest::worker_procs_ = nullptr;
std::vector<Endpoint>* ClusterTest::workers_ = nullptr;
ChildProcess* ClusterTest::router_proc_ = nullptr;
Endpoint* ClusterTest::router_ = nullptr;

const std::vector<std::string>& Prompts() {
  static const std::vector<std::string> p = {"Once upon a time",
                                             "The quick brown fox",
                                             "In the beginning",
                                             "Call me Ishmael.",
                                             "It was the best of times",
                                             "A B C D E F G",
                                             "hello world",
                                             "1 2 3 4 5 6 7 8 9",
                                             "The king said",
                                             "She walked into the room and",
                                             "Why is the sky blue?",
                                             "Dear Sir,",
                                             "To be or not to be",
                                             "The ship sailed",
                                             "and then",
                                             "Listen carefully:"};
  return p;
}

TEST_F(ClusterTest, SixteenConcurrentStreamsMatchSingleRequestRuns) {
  auto client = Connect();
  // Reference: each prompt alone.
  std::vector<std::vector<int32_t>> expected;
  for (const auto& p : Prompts()) {
    auto r = client->Generate(Greedy(p, 24));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->token_ids.size(), 24u);
    expected.push_back(r->token_ids);
  }
  // All sixteen at once, streaming, from sixteen threads sharing one client.
  std::vector<std::future<absl::StatusOr<GenerateResult>>> futures;
  std::vector<std::atomic<int>> chunks(Prompts().size());
  for (size_t i = 0; i < Prompts().size(); ++i) {
    futures.push_back(std::async(std::launch::async, [&, i] {
      return client->Generate(Greedy(Prompts()[i], 24), [&, i](const v1::GenerateResponse&) {
        chunks[i]++;
        return true;
      });
    }));
  }
  std::set<std::string> workers_used;
  for (size_t i = 0; i < futures.size(); ++i) {
    auto r = futures[i].get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->token_ids, expected[i]) << "prompt " << i;
    EXPECT_EQ(r->finish_reason, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(r->usage.completion_tokens(), 24);
    EXPECT_GT(r->usage.kvs_held(), 0);
    workers_used.insert(r->worker);
  }
  EXPECT_EQ(workers_used.size(), 2u) << "least-loaded routing should use both workers";
  // Tokens arrive as a stream (the worker batches what one step produced into a message).
  int total_chunks = 0;
  for (auto& c : chunks) total_chunks += c.load();
  EXPECT_GT(total_chunks, static_cast<int>(Prompts().size())) << "expected streams of chunks";
}

TEST_F(ClusterTest, CancelMidStreamReturnsTheWorkersBlocks) {
  auto client = Connect();
  std::string worker;
  int seen = 0;
  auto r = client->Generate(Greedy("Once upon a time", 400), [&](const v1::GenerateResponse& m) {
    worker = m.worker();
    return ++seen < 3;  // cancel after the third chunk
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  ASSERT_FALSE(worker.empty());
  const Endpoint* w = nullptr;
  for (const auto& e : *workers_) {
    if (e.address() == worker) w = &e;
  }
  ASSERT_NE(w, nullptr);
  v1::KvCapacity cap;
  for (int i = 0; i < 100; ++i) {
    cap = WorkerCapacity(*w);
    if (cap.free_blocks() == cap.total_blocks() && cap.running_requests() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(cap.free_blocks(), cap.total_blocks()) << "cancelled sequence kept its blocks";
  EXPECT_EQ(cap.running_requests(), 0);
  auto metrics = HttpGet("127.0.0.1", w->metrics_port, "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr("kvc_worker_requests_finished_total{reason=\"abort\"}"));
}

TEST_F(ClusterTest, StopStringsEndTheStreamWithoutTheStopText) {
  auto client = Connect();
  auto full = client->Generate(Greedy("The quick brown fox", 32));
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_GE(full->text.size(), 6u);
  std::string stop = full->text.substr(3, 3);
  auto req = Greedy("The quick brown fox", 32);
  req.mutable_sampling()->add_stop(stop);
  auto r = client->Generate(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->finish_reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(r->text, full->text.substr(0, full->text.find(stop)));
  // The final usage comes from the worker, which released the sequence.
  EXPECT_GT(r->usage.kvs_held(), 0);
  EXPECT_GT(r->usage.kvs_uncompressed(), 0);
  EXPECT_LE(r->usage.completion_tokens(), 32);
  EXPECT_GT(r->timings.total_seconds(), 0);
  EXPECT_GT(r->timings.first_token_seconds(), 0);
  EXPECT_LE(r->timings.first_token_seconds(), r->timings.total_seconds());
}

TEST_F(ClusterTest, EveryProcessServesMetrics) {
  auto client = Connect();
  ASSERT_TRUE(client->Generate(Greedy("hello", 4)).ok());
  auto router = HttpGet("127.0.0.1", router_->metrics_port, "/metrics");
  ASSERT_TRUE(router.ok()) << router.status();
  EXPECT_THAT(*router, HasSubstr("kvc_router_requests_total{code=\"OK\"}"));
  EXPECT_THAT(*router, HasSubstr("# TYPE kvc_router_time_to_first_token_seconds histogram"));
  EXPECT_THAT(*router,
              HasSubstr("kvc_router_worker_up{worker=\"" + (*workers_)[0].address() + "\"} 1"));
  for (const auto& w : *workers_) {
    auto m = HttpGet("127.0.0.1", w.metrics_port, "/metrics");
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_THAT(*m, HasSubstr("# TYPE kvc_worker_generated_tokens_total counter"));
    EXPECT_THAT(*m, HasSubstr("kvc_kv_blocks 2048"));
    EXPECT_THAT(*m, HasSubstr("kvc_kv_effective_capacity_tokens"));
  }
}

TEST_F(ClusterTest, BadInputGetsTheRightCodeAndNamesTheField) {
  auto client = Connect();
  struct Case {
    std::string name;
    std::function<void(v1::GenerateRequest*)> mutate;
    absl::StatusCode code;
    std::string message;
  };
  std::string huge(200000, 'x');
  std::vector<Case> cases = {
      {"empty prompt", [](auto* r) { r->set_prompt(""); }, absl::StatusCode::kInvalidArgument,
       "prompt"},
      {"prompt longer than context", [&](auto* r) { r->set_prompt(huge); },
       absl::StatusCode::kInvalidArgument, "context"},
      {"max_tokens 0", [](auto* r) { r->mutable_sampling()->set_max_tokens(0); },
       absl::StatusCode::kInvalidArgument, "sampling.max_tokens"},
      {"max_tokens negative", [](auto* r) { r->mutable_sampling()->set_max_tokens(-5); },
       absl::StatusCode::kInvalidArgument, "sampling.max_tokens"},
      {"max_tokens absurd", [](auto* r) { r->mutable_sampling()->set_max_tokens(2000000000); },
       absl::StatusCode::kInvalidArgument, "sampling.max_tokens"},
      {"temperature < 0", [](auto* r) { r->mutable_sampling()->set_temperature(-1); },
       absl::StatusCode::kInvalidArgument, "sampling.temperature"},
      {"top_p 0", [](auto* r) { r->mutable_sampling()->set_top_p(0); },
       absl::StatusCode::kInvalidArgument, "sampling.top_p"},
      {"top_p > 1", [](auto* r) { r->mutable_sampling()->set_top_p(1.5); },
       absl::StatusCode::kInvalidArgument, "sampling.top_p"},
      {"unknown model", [](auto* r) { r->set_model("no-such-model"); }, absl::StatusCode::kNotFound,
       "no-such-model"},
      {"compression rate < 1", [](auto* r) { r->mutable_compression()->set_compression_rate(0.5); },
       absl::StatusCode::kInvalidArgument, "compression.compression_rate"},
      {"prompt and ids", [](auto* r) { r->add_prompt_token_ids(3); },
       absl::StatusCode::kInvalidArgument, "prompt"},
  };
  for (const auto& c : cases) {
    auto req = Greedy("Once upon a time", 8);
    c.mutate(&req);
    auto r = client->Generate(req);
    EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message)) << c.name;
  }
  // The servers keep serving.
  auto ok = client->Generate(Greedy("Once upon a time", 8));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->token_ids.size(), 8u);
}

TEST_F(ClusterTest, CliGeneratesAndReportsStatus) {
  std::string out = *dir_ + "/cli.out";
  std::string cmd =
      absl::StrCat(BinDir(), "/kvc generate --server ", router_->address(),
                   " --max-tokens 8 --temperature 0 \"Once upon a time\" > ", out, " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << testing::ReadFile(out);
  EXPECT_THAT(testing::ReadFile(out), HasSubstr("[finish: length | prompt"));
  cmd = absl::StrCat(BinDir(), "/kvc status --server ", router_->address(), " > ", out, " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << testing::ReadFile(out);
  EXPECT_THAT(testing::ReadFile(out), HasSubstr((*workers_)[1].address()));
  cmd = absl::StrCat(BinDir(), "/kvc generate --server ", router_->address(), " --top-p 7 hi > ",
                     out, " 2>&1");
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_THAT(testing::ReadFile(out), HasSubstr("INVALID_ARGUMENT: sampling.top_p"));
}

TEST_F(ClusterTest, CompressionThroughTheRouterShowsTheRatioInUsage) {
  // A prompt of ~300 tokens (the fixture model's context is 512).
  auto client = Connect();
  std::string prompt;
  while (true) {
    auto t = client->Tokenize(prompt + "the quick brown fox jumps over the lazy dog. ");
    ASSERT_TRUE(t.ok()) << t.status();
    if (t->token_ids_size() > 300) break;
    prompt += "the quick brown fox jumps over the lazy dog. ";
  }
  std::string out = *dir_ + "/cli-compress.out";
  std::string cmd = absl::StrCat(BinDir(), "/kvc generate --server ", router_->address(),
                                 " --max-tokens 16 --temperature 0 --compression-rate 8",
                                 " --protected-window 8 \"", prompt, "\" > ", out, " 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << testing::ReadFile(out);
  std::string text = testing::ReadFile(out);
  size_t p = text.find("compression ratio ");
  ASSERT_NE(p, std::string::npos) << text;
  double ratio = std::stod(text.substr(p + std::string("compression ratio ").size()));
  EXPECT_GT(ratio, 4.0) << text;
  // The same through the SDK: usage carries KVs held vs uncompressed.
  auto req = Greedy(prompt, 16);
  req.mutable_compression()->set_compression_rate(8);
  req.mutable_compression()->set_protected_window(8);
  auto r = client->Generate(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->usage.kvs_held() * 4, r->usage.kvs_uncompressed());
  EXPECT_NEAR(r->usage.compression_ratio(),
              static_cast<double>(r->usage.kvs_uncompressed()) / r->usage.kvs_held(), 1e-9);
  EXPECT_GE(r->usage.compressions(), 1);
  // Policy none through the API keeps every KV.
  req.mutable_compression()->set_policy(v1::COMPRESSION_POLICY_NONE);
  auto n = client->Generate(req);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->usage.kvs_held(), n->usage.kvs_uncompressed());
}

TEST_F(ClusterTest, PrometheusScrapesEveryProcess) {
  if (!std::filesystem::exists("/usr/bin/prometheus")) {
    FAIL() << "prometheus is not installed (scripts/install-deps installs it)";
  }
  std::string pdir = *dir_ + "/prom";
  std::filesystem::create_directories(pdir);
  std::string targets = absl::StrCat("'127.0.0.1:", router_->metrics_port,
                                     "', '127.0.0.1:", (*workers_)[0].metrics_port,
                                     "', '127.0.0.1:", (*workers_)[1].metrics_port, "'");
  {
    std::ofstream cfg(pdir + "/prometheus.yml");
    cfg << "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kvc\n"
        << "    static_configs:\n      - targets: [" << targets << "]\n";
  }
  // Find a free port for Prometheus' own HTTP API.
  int port = 0;
  {
    MetricsRegistry dummy;
    MetricsHttpServer probe(&dummy);
    auto p = probe.Start("127.0.0.1", 0);
    ASSERT_TRUE(p.ok());
    port = *p;
  }
  auto prom =
      ChildProcess::Start({"/usr/bin/prometheus", "--config.file=" + pdir + "/prometheus.yml",
                           "--storage.tsdb.path=" + pdir + "/data",
                           absl::StrCat("--web.listen-address=127.0.0.1:", port)},
                          pdir + "/prometheus.log");
  ASSERT_TRUE(prom.ok()) << prom.status();
  bool all_up = false;
  std::string last;
  for (int i = 0; i < 150 && !all_up; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto r = HttpGet("127.0.0.1", port, "/api/v1/query?query=sum(up%7Bjob%3D%22kvc%22%7D)");
    if (!r.ok()) continue;
    last = *r;
    all_up = last.find("\"3\"") != std::string::npos;
  }
  EXPECT_TRUE(all_up) << last << "\n" << prom->Log();
  // A kvc metric is queryable through Prometheus.
  auto q = HttpGet("127.0.0.1", port, "/api/v1/query?query=kvc_kv_blocks");
  ASSERT_TRUE(q.ok());
  EXPECT_THAT(*q, HasSubstr("2048"));
}

// Separate clusters for failure paths, so they don't disturb the shared one.
TEST(ClusterFailureTest, WorkerThatRefusesConnectionsIsUnavailable) {
  std::string dir = MakeTempDir("kvc-e2e-fail-");
  // Reserve a port and close it again: nothing listens there.
  int dead_port;
  {
    MetricsRegistry dummy;
    MetricsHttpServer probe(&dummy);
    dead_port = *probe.Start("127.0.0.1", 0);
  }
  ChildProcess router;
  auto r = StartRouter(&router, dir, {}, absl::StrCat("127.0.0.1:", dead_port));
  ASSERT_TRUE(r.ok()) << r.status();
  auto client = Client::Connect(r->address());
  ASSERT_TRUE(client.ok());
  v1::GenerateRequest req;
  req.set_prompt("hello");
  auto g = (*client)->Generate(req);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kUnavailable) << g.status();
  EXPECT_THAT(std::string(g.status().message()), HasSubstr("worker"));
  auto st = (*client)->GetClusterStatus();
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->workers_size(), 1);
  EXPECT_FALSE(st->workers(0).healthy());
  EXPECT_THAT(st->workers(0).address(), HasSubstr(std::to_string(dead_port)));
  std::filesystem::remove_all(dir);
}

TEST(ClusterFailureTest, WorkerDyingMidStreamFailsOnlyItsRequests) {
  std::string dir = MakeTempDir("kvc-e2e-die-");
  ChildProcess w0, w1, router;
  auto e0 = StartWorker(&w0, dir, "w0", 2048);
  ASSERT_TRUE(e0.ok()) << e0.status();
  auto e1 = StartWorker(&w1, dir, "w1", 2048);
  ASSERT_TRUE(e1.ok()) << e1.status();
  auto r = StartRouter(&router, dir, {*e0, *e1});
  ASSERT_TRUE(r.ok()) << r.status();
  auto client = Client::Connect(r->address());
  ASSERT_TRUE(client.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // Two long requests go to different workers (least-loaded): the first keeps its worker busy;
  // the second's worker is killed as soon as that request's first chunk arrives.
  auto long_req = [](const std::string& p) {
    v1::GenerateRequest q;
    q.set_prompt(p);
    q.mutable_sampling()->set_temperature(0);
    q.mutable_sampling()->set_max_tokens(400);
    q.mutable_sampling()->set_ignore_eos(true);
    return q;
  };
  std::promise<void> survivor_started;
  auto f2 = std::async(std::launch::async, [&] {
    bool told = false;
    return (*client)->Generate(long_req("In the beginning"), [&](const v1::GenerateResponse&) {
      if (!told) survivor_started.set_value();
      told = true;
      return true;
    });
  });
  survivor_started.get_future().get();
  std::string victim_addr;
  auto f1 = std::async(std::launch::async, [&] {
    bool killed = false;
    return (*client)->Generate(long_req("Once upon a time"), [&](const v1::GenerateResponse& m) {
      if (!killed) {
        victim_addr = m.worker();
        (victim_addr == e0->address() ? w0 : w1).Kill();
        killed = true;
      }
      return true;
    });
  });
  auto r1 = f1.get();
  auto r2 = f2.get();
  EXPECT_FALSE(r1.ok());
  EXPECT_THAT(std::string(r1.status().message()), HasSubstr(victim_addr));
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->token_ids.size(), 400u);
  EXPECT_NE(r2->worker, victim_addr);
  // New requests go to the surviving worker.
  auto r3 = (*client)->Generate(long_req("hello"));
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_NE(r3->worker, victim_addr);
  std::filesystem::remove_all(dir);
}

TEST(WorkerStartupTest, CorruptModelFilesFailWithTheFileNamed) {
  std::string dir = MakeTempDir("kvc-e2e-corrupt-");
  // (a) a truncated safetensors file.
  std::string m1 = dir + "/truncated";
  std::filesystem::create_directories(m1);
  std::filesystem::copy_file(ModelDir() + "/config.json", m1 + "/config.json");
  {
    std::string full = testing::ReadFile(ModelDir() + "/model.safetensors");
    std::ofstream(m1 + "/model.safetensors") << full.substr(0, full.size() / 2);
  }
  // (b) a config.json with a missing field.
  std::string m2 = dir + "/badconfig";
  std::filesystem::create_directories(m2);
  std::filesystem::copy_file(ModelDir() + "/model.safetensors", m2 + "/model.safetensors");
  {
    std::string cfg = testing::ReadFile(ModelDir() + "/config.json");
    size_t p = cfg.find("\"num_hidden_layers\"");
    ASSERT_NE(p, std::string::npos);
    cfg.replace(p, std::string("\"num_hidden_layers\"").size(), "\"num_hidden_layerz\"");
    std::ofstream(m2 + "/config.json") << cfg;
  }
  for (const auto& [model, expect] : std::vector<std::pair<std::string, std::string>>{
           {m1, "model.safetensors"}, {m2, "num_hidden_layers"}}) {
    auto p = ChildProcess::Start(
        {BinDir() + "/kvc-worker", "--model_dir=" + model, "--port=0", "--metrics_port=-1"},
        dir + "/startup.log");
    ASSERT_TRUE(p.ok());
    auto code = p->WaitExit(absl::Seconds(30));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 1);
    EXPECT_THAT(p->Log(), HasSubstr(expect)) << p->Log();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvc
