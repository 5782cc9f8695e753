#include "common/metrics.h"

#include <thread>

#include "common/metrics_http.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersCountersGaugesWithHelpTypeAndLabels) {
  MetricsRegistry r;
  auto& c = r.AddCounter("kvc_test_requests_total", "Requests.", {"status"});
  c.WithLabels({"OK"}).Increment();
  c.WithLabels({"OK"}).Increment(2);
  c.WithLabels({"INVALID_ARGUMENT"}).Increment();
  r.AddGauge("kvc_test_free_blocks", "Free blocks.").Get().Set(12.5);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("# HELP kvc_test_requests_total Requests.\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvc_test_requests_total counter\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_requests_total{status=\"OK\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_requests_total{status=\"INVALID_ARGUMENT\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvc_test_free_blocks gauge\nkvc_test_free_blocks 12.5\n"));
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  MetricsRegistry r;
  auto& h = r.AddHistogram("kvc_test_latency_seconds", "Latency.", {0.1, 1.0}).Get();
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(0.5);
  h.Observe(7);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("kvc_test_latency_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_latency_seconds_bucket{le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_latency_seconds_sum 8.05\n"));
  EXPECT_THAT(text, HasSubstr("kvc_test_latency_seconds_count 4\n"));
}

TEST(MetricsTest, EscapesLabelValues) {
  MetricsRegistry r;
  r.AddCounter("kvc_test_x_total", "X.", {"v"}).WithLabels({"a\"b\\c\nd"}).Increment();
  EXPECT_THAT(r.Render(), HasSubstr("kvc_test_x_total{v=\"a\\\"b\\\\c\\nd\"} 1"));
}

TEST(MetricsTest, CollectorsRunBeforeRender) {
  MetricsRegistry r;
  auto& g = r.AddGauge("kvc_test_g", "G.").Get();
  int calls = 0;
  r.AddCollector([&] { g.Set(++calls); });
  EXPECT_THAT(r.Render(), HasSubstr("kvc_test_g 1\n"));
  EXPECT_THAT(r.Render(), HasSubstr("kvc_test_g 2\n"));
}

TEST(MetricsTest, ConcurrentIncrementsAreNotLost) {
  MetricsRegistry r;
  auto& c = r.AddCounter("kvc_test_n_total", "N.").Get();
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) c.Increment();
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(c.value(), 40000);
}

TEST(MetricsDeathTest, RejectsNamesWithoutPrefixOrHelp) {
  MetricsRegistry r;
  EXPECT_DEATH(r.AddCounter("requests_total", "x"), "must start with kvc_");
  EXPECT_DEATH(r.AddCounter("kvc_requests_total", ""), "needs help text");
}

TEST(MetricsHttpTest, ServesMetricsOverHttp) {
  MetricsRegistry r;
  r.AddCounter("kvc_test_http_total", "H.").Get().Increment(5);
  MetricsHttpServer server(&r);
  auto port = server.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  auto body = HttpGet("127.0.0.1", *port, "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_THAT(*body, HasSubstr("kvc_test_http_total 5\n"));
  EXPECT_FALSE(HttpGet("127.0.0.1", *port, "/nope").ok());
  server.Stop();
  EXPECT_FALSE(HttpGet("127.0.0.1", *port, "/metrics").ok());
}

}  // namespace
}  // namespace kvc
