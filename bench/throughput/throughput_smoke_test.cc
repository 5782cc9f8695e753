// Smoke test of kvc-bench-throughput on the CPU backend: a tiny random Llama
// (bench/throughput/configs/tiny-llama.json), 8 prompts, a KV pool that fits only 2 uncompressed
// requests, rates 1 and 8. Checks the JSON lines the binary appends (token accounting, the pool
// bound at rate 1, compression raising the decode batch), the PNG plot and option errors.
// Runs the binary built next to this test (KVC_BIN_DIR, set by kvc_cc_test); cwd = repo root.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvc {
namespace {

constexpr int kPrompts = 8;
constexpr int kIn = 256;
constexpr int kOut = 32;

std::string Binary() {
  const char* dir = std::getenv("KVC_BIN_DIR");
  return std::string(dir ? dir : "build/bin") + "/kvc-bench-throughput";
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid())))
      .string();
}

// Runs the binary with `args`, stdout+stderr to `log`; returns the exit status.
int RunBench(const std::string& args, const std::string& log) {
  const std::string cmd = Binary() + " " + args + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

class ThroughputSmokeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    json_ = new std::string(TempPath("kvc_tput.jsonl"));
    png_ = new std::string(TempPath("kvc_tput.png"));
    log_ = new std::string(TempPath("kvc_tput.log"));
    std::filesystem::remove(*json_);
    std::filesystem::remove(*png_);
    rc_ = RunBench(
        "--backend cpu --config bench/throughput/configs/tiny-llama.json "
        "--random-weights --num-prompts " +
            std::to_string(kPrompts) + " --input-len " + std::to_string(kIn) + " --output-len " +
            std::to_string(kOut) + " --fit-uncompressed 2 --rates 8,1 --json " + *json_ +
            " --plot " + *png_,
        *log_);
    std::ifstream f(*json_);
    std::string line;
    lines_ = new std::vector<nlohmann::json>();
    while (std::getline(f, line)) {
      if (!line.empty()) lines_->push_back(nlohmann::json::parse(line));
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove(*json_);
    std::filesystem::remove(*png_);
    std::filesystem::remove(*log_);
    delete json_;
    delete png_;
    delete log_;
    delete lines_;
  }
  static const nlohmann::json& ByRate(double rate) {
    for (const auto& j : *lines_) {
      if (j.at("rate").get<double>() == rate) return j;
    }
    ADD_FAILURE() << "no line for rate " << rate;
    static const nlohmann::json empty = nlohmann::json::object();
    return empty;
  }

  static std::string* json_;
  static std::string* png_;
  static std::string* log_;
  static int rc_;
  static std::vector<nlohmann::json>* lines_;
};

std::string* ThroughputSmokeTest::json_ = nullptr;
std::string* ThroughputSmokeTest::png_ = nullptr;
std::string* ThroughputSmokeTest::log_ = nullptr;
int ThroughputSmokeTest::rc_ = -1;
std::vector<nlohmann::json>* ThroughputSmokeTest::lines_ = nullptr;

TEST_F(ThroughputSmokeTest, RunsAndWritesOneLinePerRateBaselineFirst) {
  ASSERT_EQ(rc_, 0) << ReadFile(*log_);
  ASSERT_EQ(lines_->size(), 2u) << ReadFile(*log_);
  // The compression-off run is the baseline and runs first whatever the order of --rates.
  EXPECT_EQ((*lines_)[0].at("rate").get<double>(), 1.0);
  EXPECT_EQ((*lines_)[1].at("rate").get<double>(), 8.0);
  for (const auto& j : *lines_) {
    EXPECT_FALSE(j.contains("error")) << j.dump();
    EXPECT_EQ(j.at("kind"), "kvc-throughput");
    EXPECT_EQ(j.at("backend"), "cpu");
  }
  const std::string log = ReadFile(*log_);
  EXPECT_NE(log.find("| rate | policy | total tok/s"), std::string::npos) << log;
  EXPECT_NE(log.find("random token ids"), std::string::npos) << log;
}

TEST_F(ThroughputSmokeTest, TokenAccountingIsExact) {
  ASSERT_EQ(lines_->size(), 2u) << ReadFile(*log_);
  for (const auto& j : *lines_) {
    EXPECT_EQ(j.at("prompt_tokens").get<int64_t>(), int64_t{kPrompts} * kIn) << j.dump();
    EXPECT_EQ(j.at("output_tokens").get<int64_t>(), int64_t{kPrompts} * kOut) << j.dump();
    EXPECT_EQ(j.at("total_tokens").get<int64_t>(), int64_t{kPrompts} * (kIn + kOut)) << j.dump();
    const double wall = j.at("wall_seconds").get<double>();
    ASSERT_GT(wall, 0);
    EXPECT_NEAR(j.at("total_tok_s").get<double>(), kPrompts * (kIn + kOut) / wall,
                1e-6 * kPrompts * (kIn + kOut) / wall);
    // Every token past each request's first comes from a step that decodes it; those in
    // decode-only steps are a subset.
    EXPECT_GT(j.at("decode_steps").get<int64_t>(), 0);
    EXPECT_GT(j.at("decode_tok_s").get<double>(), 0);
    EXPECT_LE(j.at("decode_seconds").get<double>() + j.at("prefill_seconds").get<double>(),
              wall * 1.0001);
    EXPECT_LE(j.at("max_decode_batch").get<int>(), kPrompts);
    EXPECT_GE(j.at("max_decode_batch").get<double>(), j.at("mean_decode_batch").get<double>());
  }
}

TEST_F(ThroughputSmokeTest, CompressionRaisesTheDecodeBatchInABoundPool) {
  ASSERT_EQ(lines_->size(), 2u) << ReadFile(*log_);
  const auto& off = ByRate(1);
  const auto& on = ByRate(8);
  // The pool holds exactly 2 uncompressed requests.
  EXPECT_LE(off.at("max_decode_batch").get<int>(), 2) << off.dump();
  EXPECT_EQ(off.at("compressions").get<int64_t>(), 0);
  EXPECT_EQ(off.at("policy"), "none");
  EXPECT_DOUBLE_EQ(off.at("speedup_vs_rate1").get<double>(), 1.0);
  EXPECT_EQ(on.at("policy"), "kvcompress");
  EXPECT_GT(on.at("compressions").get<int64_t>(), 0) << on.dump();
  EXPECT_GT(on.at("compressions_by_trigger").value("prefill", int64_t{0}), 0) << on.dump();
  EXPECT_GT(on.at("evicted_kvs").get<int64_t>(), 0);
  EXPECT_GT(on.at("compression_count").get<int64_t>(), 0);
  EXPECT_GT(on.at("mean_final_compression_ratio").get<double>(), 1.5) << on.dump();
  EXPECT_GE(on.at("max_decode_batch").get<int>(), off.at("max_decode_batch").get<int>())
      << on.dump() << "\n"
      << off.dump();
  EXPECT_GT(on.at("max_decode_batch").get<int>(), 2) << on.dump();
}

TEST_F(ThroughputSmokeTest, WritesAPng) {
  const std::string png = ReadFile(*png_);
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST(ThroughputOptionsTest, BadOptionsExitWithUsageError) {
  const std::string log = TempPath("kvc_tput_bad.log");
  EXPECT_EQ(RunBench("--backend gpu --config bench/throughput/configs/tiny-llama.json "
                     "--random-weights",
                     log),
            2);
  EXPECT_NE(ReadFile(log).find("--backend"), std::string::npos) << ReadFile(log);
  EXPECT_EQ(RunBench("--config bench/throughput/configs/tiny-llama.json", log), 2);
  EXPECT_NE(ReadFile(log).find("--random-weights"), std::string::npos) << ReadFile(log);
  EXPECT_EQ(RunBench("--config bench/throughput/configs/tiny-llama.json --random-weights "
                     "--rates 1,0.5",
                     log),
            2);
  EXPECT_NE(ReadFile(log).find("--rates"), std::string::npos) << ReadFile(log);
  // A config that does not exist is a runtime error naming the file.
  EXPECT_EQ(RunBench("--backend cpu --config /nonexistent/config.json --random-weights", log), 1);
  EXPECT_NE(ReadFile(log).find("/nonexistent/config.json"), std::string::npos) << ReadFile(log);
  std::filesystem::remove(log);
}

}  // namespace
}  // namespace kvc
