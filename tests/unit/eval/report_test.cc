// kvc-eval reports: aggregation, the JSON shape of results.json's retrieval part, and the PNG
// line-plot writer (decoded back with zlib).
#include "bench/eval/report.h"

#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "bench/eval/plot.h"
#include "gtest/gtest.h"

namespace kvc::eval {
namespace {

const std::vector<Variant> kVariants = {Variant{}, Variant{CompressionPolicyKind::kKvCompress, 8},
                                        Variant{CompressionPolicyKind::kStreaming, 8}};

CaseOutcome Outcome(TaskKind t, int32_t len, int32_t index, const std::string& answer,
                    std::vector<std::string> outputs, double target_depth) {
  CaseOutcome o;
  o.task = t;
  o.length = len;
  o.index = index;
  o.answer = answer;
  o.outputs = std::move(outputs);
  o.kept = {1.0, 0.125, 0.25};
  o.target_depth = target_depth;
  o.depth = target_depth < 0 ? 0.5 : target_depth;
  return o;
}

std::vector<CaseOutcome> Outcomes() {
  return {
      // passkey: full 2/2, kvcompress 2/2, streaming 0/2.
      Outcome(TaskKind::kPasskey, 1024, 0, "12345", {" 12345.", " 12345.\n", " 1234."}, 0.0),
      Outcome(TaskKind::kPasskey, 1024, 1, "54321", {" 54321.", " 54321.", " 5."}, 0.1),
      // kv: full 2/2, kvcompress 1/2, streaming 1/2.
      Outcome(TaskKind::kKv, 1024, 0, "aa", {" aa.", " ab.", " aa."}, 0.0),
      Outcome(TaskKind::kKv, 1024, 1, "bb", {" bb.", " bb.", " b."}, 0.1),
  };
}

TEST(ReportTest, AggregatesAccuracyKeptFractionAndDepth) {
  const auto rows = AggregateScores(kVariants, Outcomes());
  ASSERT_EQ(rows.size(), 6u);  // 2 tasks x 3 variants
  // Ordered by length, task (AllTasks order: passkey before kv), variant.
  EXPECT_EQ(rows[0].task, "passkey");
  EXPECT_TRUE(rows[0].variant.full());
  EXPECT_EQ(rows[3].task, "kv");
  const auto& pk_stream = rows[2];
  EXPECT_EQ(pk_stream.variant.policy, CompressionPolicyKind::kStreaming);
  EXPECT_EQ(pk_stream.cases, 2);
  EXPECT_EQ(pk_stream.correct, 0);
  EXPECT_DOUBLE_EQ(pk_stream.accuracy, 0.0);
  EXPECT_DOUBLE_EQ(pk_stream.kept_fraction, 0.25);
  const auto& kv_kvc = rows[4];
  EXPECT_DOUBLE_EQ(kv_kvc.accuracy, 0.5);
  ASSERT_EQ(kv_kvc.by_depth.size(), static_cast<size_t>(kNumDepths));
  EXPECT_DOUBLE_EQ(kv_kvc.by_depth[0], 0.0);  // depth 0: " ab." is wrong
  EXPECT_DOUBLE_EQ(kv_kvc.by_depth[1], 1.0);
  EXPECT_TRUE(std::isnan(kv_kvc.by_depth[5]));  // no case there

  const auto means = MeanOverTasks(rows);
  ASSERT_EQ(means.size(), 3u);
  EXPECT_TRUE(means[0].variant.full());
  EXPECT_DOUBLE_EQ(means[0].accuracy, 1.0);
  EXPECT_DOUBLE_EQ(means[0].relative_to_full, 1.0);
  EXPECT_DOUBLE_EQ(means[1].accuracy, 0.75);  // (1 + 0.5) / 2
  EXPECT_DOUBLE_EQ(means[1].relative_to_full, 0.75);
  EXPECT_DOUBLE_EQ(means[2].accuracy, 0.25);  // (0 + 0.5) / 2
  EXPECT_EQ(means[2].tasks, 2);
}

TEST(ReportTest, JsonShape) {
  const auto rows = AggregateScores(kVariants, Outcomes());
  const auto j = ScoreRowsJson(rows);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), rows.size());
  for (const auto& r : j) {
    for (const char* key : {"task", "length", "variant", "policy", "rate", "cases", "correct",
                            "accuracy", "kept_fraction", "accuracy_by_depth"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_TRUE(r["accuracy"].is_number());
    EXPECT_TRUE(r["accuracy_by_depth"].is_array());
  }
  EXPECT_EQ(j[0]["variant"], "full");
  EXPECT_EQ(j[0]["policy"], "none");
  EXPECT_EQ(j[0]["rate"], 1.0);
  EXPECT_EQ(j[1]["variant"], "kvcompress@8");
  EXPECT_EQ(j[1]["rate"], 8.0);
  EXPECT_TRUE(j[4]["accuracy_by_depth"][5].is_null());  // NaN becomes null

  const auto m = MeanRowsJson(MeanOverTasks(rows));
  ASSERT_EQ(m.size(), 3u);
  for (const char* key : {"length", "variant", "policy", "rate", "tasks", "accuracy",
                          "relative_to_full", "kept_fraction"}) {
    EXPECT_TRUE(m[1].contains(key)) << key;
  }
  const auto c = CasesJson(kVariants, Outcomes());
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(c[0]["outputs"]["streaming@8"], "1234");  // parsed answers
  EXPECT_EQ(c[0]["answer"], "12345");
  EXPECT_EQ(c[0]["task"], "passkey");
  // Round trip through text.
  const auto parsed = nlohmann::json::parse(j.dump());
  EXPECT_EQ(parsed, j);
}

TEST(ReportTest, CasesJsonRoundTripForMerging) {
  const auto cases = CasesJson(kVariants, Outcomes());
  EXPECT_DOUBLE_EQ(cases[0]["kept"]["kvcompress@8"].get<double>(), 0.125);
  auto back = CasesFromJson(cases, kVariants);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 4u);
  EXPECT_EQ((*back)[1].index, 1);
  EXPECT_EQ((*back)[1].task, TaskKind::kPasskey);
  EXPECT_DOUBLE_EQ((*back)[1].target_depth, 0.1);
  // Parsed answers score exactly like the raw generations.
  const auto a = AggregateScores(kVariants, Outcomes());
  const auto b = AggregateScores(kVariants, *back);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].correct, b[i].correct);
    EXPECT_DOUBLE_EQ(a[i].kept_fraction, b[i].kept_fraction);
    EXPECT_EQ(a[i].by_depth.size(), b[i].by_depth.size());
  }
  auto broken = cases;
  broken[2].erase("answer");
  auto err = CasesFromJson(broken, kVariants);
  ASSERT_FALSE(err.ok());
  EXPECT_NE(std::string(err.status().message()).find("cases[2]"), std::string::npos);
  // A variant the file does not have.
  EXPECT_FALSE(CasesFromJson(cases, {Variant{CompressionPolicyKind::kSnapKv, 2}}).ok());
}

TEST(ReportTest, VariantNames) {
  for (const Variant& v : kVariants) {
    auto p = ParseVariantName(VariantName(v));
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(VariantName(*p), VariantName(v));
  }
  EXPECT_EQ(VariantName(Variant{CompressionPolicyKind::kPyramidKv, 2.5}), "pyramidkv@2.5");
  EXPECT_FALSE(ParseVariantName("kvcompress").ok());
  EXPECT_FALSE(ParseVariantName("kvcompress@0.5").ok());
  EXPECT_FALSE(ParseVariantName("magic@4").ok());
}

// Decodes our own PNG: signature, chunk CRCs, IHDR, and the pixels (filter 0 rows).
struct Decoded {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;
};
Decoded DecodePng(const std::string& png) {
  Decoded d;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  size_t p = 8;
  std::string idat;
  auto u32 = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(png[at])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(png[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(png[at + 2])) << 8) |
           static_cast<uint32_t>(static_cast<uint8_t>(png[at + 3]));
  };
  std::vector<std::string> types;
  while (p + 12 <= png.size()) {
    const uint32_t len = u32(p);
    const std::string type = png.substr(p + 4, 4);
    const std::string body = png.substr(p + 4, 4 + len);
    EXPECT_EQ(u32(p + 8 + len), static_cast<uint32_t>(crc32(
                                    0, reinterpret_cast<const Bytef*>(body.data()), body.size())))
        << type;
    types.push_back(type);
    if (type == "IHDR") {
      d.width = u32(p + 8);
      d.height = u32(p + 12);
      EXPECT_EQ(png[p + 16], 8);  // bit depth
      EXPECT_EQ(png[p + 17], 2);  // RGB
    } else if (type == "IDAT") {
      idat += png.substr(p + 8, len);
    }
    p += 12 + len;
  }
  EXPECT_EQ(types, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));
  std::string raw(static_cast<size_t>(d.height) * (d.width * 3 + 1), '\0');
  uLongf raw_len = raw.size();
  EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_len,
                       reinterpret_cast<const Bytef*>(idat.data()), idat.size()),
            Z_OK);
  EXPECT_EQ(raw_len, raw.size());
  for (uint32_t y = 0; y < d.height; ++y) {
    EXPECT_EQ(raw[y * (d.width * 3 + 1)], 0) << "filter byte";
    const char* row = raw.data() + y * (d.width * 3 + 1) + 1;
    d.rgb.insert(d.rgb.end(), row, row + d.width * 3);
  }
  return d;
}

TEST(PlotTest, PngRoundTrip) {
  Canvas c(7, 5, {255, 255, 255});
  c.Set(0, 0, {1, 2, 3});
  c.Set(6, 4, {200, 100, 50});
  c.Set(9, 9, {0, 0, 0});  // outside: ignored
  auto png = EncodePng(c);
  ASSERT_TRUE(png.ok());
  const Decoded d = DecodePng(*png);
  EXPECT_EQ(d.width, 7u);
  EXPECT_EQ(d.height, 5u);
  EXPECT_EQ(d.rgb, c.rgb());
  EXPECT_EQ(d.rgb[0], 1);
  EXPECT_EQ(d.rgb[(4 * 7 + 6) * 3 + 1], 100);
}

TEST(PlotTest, TextAndLines) {
  Canvas c(40, 20);
  const Rgb red{255, 0, 0};
  EXPECT_EQ(c.Text(1, 1, "1x", red), 12);
  // '1' has its stem in column 2 on rows 1..5; its foot spans columns 1..3 on row 6.
  EXPECT_EQ(c.At(1 + 2, 1 + 3), red);
  EXPECT_EQ(c.At(1 + 1, 1 + 6), red);
  EXPECT_EQ(c.At(1 + 0, 1 + 3), (Rgb{255, 255, 255}));
  c.Line(0, 19, 39, 19, red, 1);
  for (int x = 0; x < 40; ++x) EXPECT_EQ(c.At(x, 19), red);
  c.Line(30, 0, 30, 10, {0, 0, 255}, 3);
  EXPECT_EQ(c.At(29, 5), (Rgb{0, 0, 255}));
  EXPECT_EQ(c.At(31, 5), (Rgb{0, 0, 255}));
  EXPECT_EQ(c.At(33, 5), (Rgb{255, 255, 255}));
}

TEST(PlotTest, LinePlotDrawsEverySeriesAndRejectsBadInput) {
  LinePlot p;
  p.title = "t";
  p.x = {1, 2, 4, 8};
  p.series = {{"a", {255, 0, 0}, {1.0, 0.9, 0.5, 0.1}},
              {"b", {0, 0, 255}, {1.0, std::nan(""), 0.2, 0.0}}};
  auto c = RenderLinePlot(p, 400, 300);
  ASSERT_TRUE(c.ok()) << c.status();
  int64_t red = 0, blue = 0;
  for (int y = 0; y < 300; ++y) {
    for (int x = 0; x < 400; ++x) {
      red += c->At(x, y) == Rgb{255, 0, 0};
      blue += c->At(x, y) == Rgb{0, 0, 255};
    }
  }
  EXPECT_GT(red, 200);
  EXPECT_GT(blue, 100);
  LinePlot bad = p;
  bad.series[0].y.pop_back();
  EXPECT_EQ(RenderLinePlot(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.x[0] = 0;
  EXPECT_EQ(RenderLinePlot(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.x.clear();
  EXPECT_EQ(RenderLinePlot(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlotTest, WritesScorePlotsPerTaskAndMean) {
  const std::string dir = testing::TempDir() + "/eval_plots";
  std::filesystem::create_directories(dir);
  const auto rows = AggregateScores(kVariants, Outcomes());
  auto files = WriteScorePlots(
      dir, rows, MeanOverTasks(rows),
      {CompressionPolicyKind::kKvCompress, CompressionPolicyKind::kStreaming}, {1, 8}, "");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{"score_passkey_1024.png", "score_kv_1024.png",
                                              "score_mean_1024.png"}));
  for (const auto& f : *files) {
    std::ifstream in(dir + "/" + f, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const Decoded d = DecodePng(data);
    EXPECT_EQ(d.width, 720u);
    EXPECT_EQ(d.height, 480u);
  }
}

}  // namespace
}  // namespace kvc::eval
