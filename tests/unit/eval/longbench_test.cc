// LongBench support: JSONL loading, templates, and the metrics against hand-computed values
// (worked out from LongBench's metrics.py / eval.py and the `rouge` and `fuzzywuzzy` packages).
#include "bench/eval/longbench.h"

#include <fstream>

#include "gtest/gtest.h"

namespace kvc::eval {
namespace {

TEST(LongBenchMetricsTest, NormalizeAnswer) {
  EXPECT_EQ(NormalizeAnswer("The Quick, brown fox!"), "quick brown fox");
  EXPECT_EQ(NormalizeAnswer("an apple a day"), "apple day");
  // Articles only as whole words; "theatre" and "Anna" stay.
  EXPECT_EQ(NormalizeAnswer("Theatre of Anna, the  great"), "theatre of anna great");
  // Punctuation goes before the article rule: "the-end" -> "theend".
  EXPECT_EQ(NormalizeAnswer("the-end"), "theend");
  // Non-ASCII punctuation is not removed, and separates words for the article rule.
  EXPECT_EQ(NormalizeAnswer("a\u2014b"), "\u2014b");
  EXPECT_EQ(NormalizeAnswer("  \t\n"), "");
}

TEST(LongBenchMetricsTest, QaF1) {
  // pred [cat sat on mat], truth [cat on mat]: 3 shared, P 3/4, R 1 -> 6/7.
  EXPECT_NEAR(QaF1Score("The cat sat on the mat.", "cat on mat"), 6.0 / 7.0, 1e-12);
  EXPECT_DOUBLE_EQ(QaF1Score("Paris", "paris"), 1.0);
  EXPECT_DOUBLE_EQ(QaF1Score("London", "Paris"), 0.0);
  EXPECT_DOUBLE_EQ(QaF1Score("", "Paris"), 0.0);
  EXPECT_DOUBLE_EQ(QaF1Score("the", "a"), 0.0);  // both normalise to nothing
  // Multiset: pred [a1 a1 b] vs truth [a1 b b]: shared {a1, b} = 2; P = R = 2/3.
  EXPECT_NEAR(QaF1Score("x x y", "x y y"), 2.0 / 3.0, 1e-12);
}

TEST(LongBenchMetricsTest, QaF1Zh) {
  // Character tokens: [北 京 大 学] vs [北 京]: P 1/2, R 1 -> 2/3.
  EXPECT_NEAR(QaF1ZhScore("北京大学", "北京"), 2.0 / 3.0, 1e-12);
  // Chinese punctuation is dropped.
  EXPECT_DOUBLE_EQ(QaF1ZhScore("北京。", "北京"), 1.0);
}

TEST(LongBenchMetricsTest, RougeL) {
  // One sentence each. ref words {the cat was under bed} (m = 5 distinct), hyp words
  // {the cat was found under bed} (n = 6); LCS words {the cat was under bed} = 5.
  // R = 1, P = 5/6, F = 2PR / (P + R + 1e-8).
  const double p = 5.0 / 6.0, r = 1.0;
  EXPECT_NEAR(RougeLScore("the cat was found under the bed", "the cat was under the bed"),
              2 * p * r / (p + r + 1e-8), 1e-12);
  // Two reference sentences; the union of LCS word sets counts once per distinct word.
  // hyp "a b c. d e" -> sentences ["a b c", "d e"]; ref "a x c. e d" -> ["a x c", "e d"].
  // LCS(ref1, hyp1) = {a, c}; LCS(ref1, hyp2) = {}; LCS(ref2, hyp1) = {};
  // LCS(ref2, hyp2): "e d" vs "d e" -> one word; tie-break walks left first: table[1][2] (=1)
  // vs table[2][1] (=1) are equal, so j decreases: picks "d". Union {a, c, d} = 3.
  // m = |{a x c e d}| = 5, n = |{a b c d e}| = 5 -> P = R = 3/5 -> F = 0.6.
  EXPECT_NEAR(RougeLScore("a b c. d e", "a x c. e d"), 2 * 0.36 / (1.2 + 1e-8), 1e-12);
  // Empty hypothesis (or only dots) scores 0, as LongBench catches the package's error.
  EXPECT_DOUBLE_EQ(RougeLScore("", "a b"), 0.0);
  EXPECT_DOUBLE_EQ(RougeLScore("...", "a b"), 0.0);
  // Identical text: F = 2/(2 + 1e-8).
  EXPECT_NEAR(RougeLScore("one two three", "one two three"), 2.0 / (2.0 + 1e-8), 1e-12);
}

TEST(LongBenchMetricsTest, Classification) {
  const std::vector<std::string> classes = {"Number", "Location", "Description"};
  EXPECT_DOUBLE_EQ(ClassificationScore("Type: Number", "Number", classes), 1.0);
  EXPECT_DOUBLE_EQ(ClassificationScore("Number or Location", "Number", classes), 0.5);
  EXPECT_DOUBLE_EQ(ClassificationScore("Location", "Number", classes), 0.0);
  EXPECT_DOUBLE_EQ(ClassificationScore("nothing", "Number", classes), 0.0);
  // LongBench removes list items while iterating over the list: with matches
  // [New, York, New York] and truth "New York", "New" is removed, the iterator then skips
  // "York" (shifted under it), so [York, New York] remains: 1/2, not 1.
  EXPECT_DOUBLE_EQ(ClassificationScore("New York", "New York", {"New", "York", "New York"}), 0.5);
}

TEST(LongBenchMetricsTest, RetrievalAndCount) {
  EXPECT_DOUBLE_EQ(RetrievalScore("Paragraph 3", "Paragraph 3"), 1.0);
  EXPECT_DOUBLE_EQ(RetrievalScore("Paragraph 3, or maybe Paragraph 12", "Paragraph 3"), 0.5);
  EXPECT_DOUBLE_EQ(RetrievalScore("I do not know", "Paragraph 3"), 0.0);
  EXPECT_DOUBLE_EQ(RetrievalScore("33", "Paragraph 3"), 0.0);  // whole numbers only
  EXPECT_DOUBLE_EQ(RetrievalZhScore("段落5", "段落5"), 1.0);
  EXPECT_DOUBLE_EQ(CountScore("There are 5 unique paragraphs out of 10", "5"), 0.5);
  EXPECT_DOUBLE_EQ(CountScore("5", "5"), 1.0);
  EXPECT_DOUBLE_EQ(CountScore("five", "5"), 0.0);
}

TEST(LongBenchMetricsTest, SequenceMatcherAndFuzzRatio) {
  // "abcd" vs "bcde": one block "bcd" -> 2*3/8.
  EXPECT_DOUBLE_EQ(SequenceMatcherRatio("abcd", "bcde"), 0.75);
  EXPECT_EQ(FuzzRatio("abcd", "bcde"), 75);
  // kitten / sitting: blocks "itt" and "n" -> 2*4/13 = 0.615 -> 62.
  EXPECT_NEAR(SequenceMatcherRatio("kitten", "sitting"), 8.0 / 13.0, 1e-12);
  EXPECT_EQ(FuzzRatio("kitten", "sitting"), 62);
  // Not the LCS: difflib takes the longest block first. a = "ab" + "xyz", b = "xyz" + "ab":
  // block "xyz" (3) leaves "ab" left of it in a and nothing left of it in b -> 2*3/10.
  EXPECT_DOUBLE_EQ(SequenceMatcherRatio("abxyz", "xyzab"), 0.6);
  // Half-even rounding: 1 match of 16 chars -> 12.5 -> 12.
  EXPECT_EQ(FuzzRatio("aXXXXXXX", "aYYYYYYY"), 12);
  EXPECT_EQ(FuzzRatio("same", "same"), 100);
  EXPECT_EQ(FuzzRatio("", "x"), 0);
  EXPECT_EQ(FuzzRatio("", ""), 100);
}

TEST(LongBenchMetricsTest, CodeSim) {
  // The first line without '`', '#' or '//' is compared.
  EXPECT_DOUBLE_EQ(CodeSimScore("\n# add them\n    return a + b\nmore", "    return a + b"), 1.0);
  EXPECT_DOUBLE_EQ(CodeSimScore("```python\n// x\nabcd", "bcde"), 0.75);
  // No usable line: "" vs truth -> 0.
  EXPECT_DOUBLE_EQ(CodeSimScore("# only comments", "x = 1"), 0.0);
}

TEST(LongBenchScorerTest, DatasetRules) {
  EXPECT_EQ(MetricForDataset("hotpotqa"), LongBenchMetric::kQaF1);
  EXPECT_EQ(MetricForDataset("gov_report"), LongBenchMetric::kRougeL);
  EXPECT_EQ(MetricForDataset("trec"), LongBenchMetric::kClassification);
  EXPECT_EQ(MetricForDataset("lcc"), LongBenchMetric::kCodeSim);
  EXPECT_EQ(MetricForDataset("passage_count"), LongBenchMetric::kCount);
  EXPECT_EQ(MetricForDataset("dureader"), LongBenchMetric::kRougeLZh);
  EXPECT_FALSE(MetricForDataset("unknown").has_value());
  EXPECT_EQ(DatasetMaxNewTokens("gov_report"), 512);
  EXPECT_EQ(DatasetMaxNewTokens("hotpotqa"), 32);
  EXPECT_TRUE(DatasetSkipsChatTemplate("lcc"));
  EXPECT_FALSE(DatasetSkipsChatTemplate("qasper"));
  // trec: only the first line of the prediction counts.
  const std::vector<std::string> classes = {"Number", "Location"};
  EXPECT_DOUBLE_EQ(ScoreLongBenchSample("trec", "\nNumber\nLocation", {"Number"}, classes), 1.0);
  EXPECT_DOUBLE_EQ(ScoreLongBenchSample("trec", "Location\nNumber", {"Number"}, classes), 0.0);
  // Other datasets see the whole prediction; best over the answers.
  EXPECT_DOUBLE_EQ(ScoreLongBenchSample("hotpotqa", "Paris\nFrance", {"Lyon", "paris france"}, {}),
                   1.0);
}

TEST(LongBenchTemplateTest, PromptsFromTemplates) {
  auto t = DatasetPromptTemplate("hotpotqa");
  ASSERT_TRUE(t.has_value());
  LongBenchSample s;
  s.context = "CTX";
  s.input = "Q?";
  const std::string p = FormatPrompt(*t, s);
  EXPECT_EQ(p.find("{context}"), std::string::npos);
  EXPECT_NE(p.find("The following are given passages.\nCTX\n\n"), std::string::npos);
  const std::string end = "Question: Q?\nAnswer:";
  EXPECT_EQ(p.substr(p.size() - end.size()), end);
  EXPECT_EQ(FormatPrompt("{input}|{context}|{input}", s), "Q?|CTX|Q?");
  EXPECT_EQ(FormatPrompt(kGenericTemplate, s),
            "CTX\n\nAnswer the question based on the text above.\n\nQuestion: Q?\nAnswer:");
  EXPECT_FALSE(DatasetPromptTemplate("nope").has_value());
}

TEST(LongBenchLoadTest, ReadsJsonlAndNamesBadLines) {
  const std::string path = testing::TempDir() + "/lb.jsonl";
  {
    std::ofstream f(path);
    f << R"({"input": "q1", "context": "c1", "answers": ["a", "b"], "all_classes": null, )"
      << R"("dataset": "hotpotqa", "length": 12, "_id": "x1"})"
      << "\n\n"
      << R"({"input": "q2", "context": "c2", "answers": ["n"], "all_classes": ["n", "m"], )"
      << R"("dataset": "trec", "length": 3})"
      << "\n";
  }
  auto s = LoadLongBench(path);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 2u);
  EXPECT_EQ((*s)[0].answers, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE((*s)[0].all_classes.empty());
  EXPECT_EQ((*s)[0].id, "x1");
  EXPECT_EQ((*s)[0].length, 12);
  EXPECT_EQ((*s)[1].all_classes, (std::vector<std::string>{"n", "m"}));
  EXPECT_EQ((*s)[1].dataset, "trec");

  const std::string bad = testing::TempDir() + "/bad.jsonl";
  {
    std::ofstream f(bad);
    f << R"({"context": "c", "answers": ["a"], "dataset": "x"})"
      << "\n"
      << R"({"context": "c", "answers": "a", "dataset": "x"})"
      << "\n";
  }
  auto b = LoadLongBench(bad);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(b.status().message()).find("line 2"), std::string::npos);
  EXPECT_NE(std::string(b.status().message()).find("answers"), std::string::npos);
  EXPECT_EQ(LoadLongBench(testing::TempDir() + "/none.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvc::eval
