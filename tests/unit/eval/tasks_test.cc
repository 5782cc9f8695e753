// bench/eval task generator: kvc-ref's prompt formats, determinism, depth coverage, answers that
// occur only where the needles put them, haystacks from the committed held-out text.
#include "bench/eval/tasks.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvc::eval {
namespace {

constexpr char kHeldout[] = "bench/eval/data/heldout.txt";
constexpr char kTokenizer[] = "models/kvc-ref/tokenizer.json";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const Tokenizer& Tok() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    auto t = Tokenizer::FromFile(kTokenizer);
    EXPECT_TRUE(t.ok()) << t.status();
    return std::move(*t);
  }();
  return *tok;
}

const TaskGenerator& Gen() {
  static const std::unique_ptr<TaskGenerator> gen = [] {
    auto sources = LoadHaystack(kHeldout);
    EXPECT_TRUE(sources.ok()) << sources.status();
    auto g = TaskGenerator::Create(&Tok(), std::move(*sources));
    EXPECT_TRUE(g.ok()) << g.status();
    return std::move(*g);
  }();
  return *gen;
}

size_t Count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

TEST(EvalRngTest, DeterministicAndInRange) {
  EvalRng a(42), b(42), c(43);
  std::vector<uint64_t> xa, xb, xc;
  for (int i = 0; i < 100; ++i) {
    xa.push_back(a.Next());
    xb.push_back(b.Next());
    xc.push_back(c.Next());
  }
  EXPECT_EQ(xa, xb);
  EXPECT_NE(xa, xc);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const int64_t v = a.Range(3, 10);
    ASSERT_GE(v, 3);
    ASSERT_LT(v, 10);
    hist[v - 3]++;
  }
  for (int h : hist) EXPECT_GT(h, 800);  // ~1000 each
  for (int i = 0; i < 1000; ++i) {
    const double u = a.UniformDouble();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
  EXPECT_NE(SeedFor(kEvalSeedBase, TaskKind::kKv, 2048, 0),
            SeedFor(kEvalSeedBase, TaskKind::kKv, 2048, 1));
  EXPECT_NE(SeedFor(kEvalSeedBase, TaskKind::kKv, 2048, 0),
            SeedFor(kEvalSeedBase, TaskKind::kKv, 1024, 0));
  EXPECT_NE(SeedFor(kEvalSeedBase, TaskKind::kKv, 2048, 0),
            SeedFor(kEvalSeedBase, TaskKind::kPasskey, 2048, 0));
}

TEST(TaskNamesTest, RoundTrip) {
  for (TaskKind t : AllTasks()) {
    auto p = ParseTask(TaskName(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  auto bad = ParseTask("needle");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("niah_single"), std::string::npos);
}

TEST(HaystackTest, CommittedHeldoutFileIsSmallAndHasEverySource) {
  ASSERT_TRUE(std::filesystem::exists(kHeldout));
  EXPECT_LE(std::filesystem::file_size(kHeldout), 300u * 1024u);
  auto sources = LoadHaystack(kHeldout);
  ASSERT_TRUE(sources.ok()) << sources.status();
  std::set<std::string> names;
  for (const auto& s : *sources) {
    names.insert(s.name);
    EXPECT_GT(s.text.size(), 20000u) << s.name;
  }
  EXPECT_EQ(names, (std::set<std::string>{"sotu", "moby_dick", "austen", "kjv", "fortunes",
                                          "jargon", "python_docs"}));
  // Every source can hold a 4k-token haystack.
  for (const auto& [name, n] : Gen().SourceTokens()) EXPECT_GT(n, 4096 + 64) << name;
}

TEST(HaystackTest, ParsesBothFormatsAndRejectsMalformedFiles) {
  const std::string dir = testing::TempDir();
  const std::string txt = dir + "/hay.txt";
  {
    std::ofstream f(txt);
    f << "# header\n@@source a\nline one\n\nline two\n@@source b\nbee\n";
  }
  auto s = LoadHaystack(txt);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 2u);
  EXPECT_EQ((*s)[0].name, "a");
  EXPECT_EQ((*s)[0].text, "line one\n\nline two\n");
  EXPECT_EQ((*s)[1].text, "bee\n");

  const std::string bad = dir + "/bad.txt";
  {
    std::ofstream f(bad);
    f << "# header\nstray text\n@@source a\nx\n";
  }
  auto b = LoadHaystack(bad);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(b.status().message()).find("line 2"), std::string::npos);
  EXPECT_EQ(LoadHaystack(dir + "/missing.txt").status().code(), absl::StatusCode::kNotFound);
}

TEST(TaskGeneratorTest, NeedleWordsAreTheListKvcRefWasTrainedWith) {
  const std::string results = ReadAll("models/kvc-ref/results.json");
  ASSERT_FALSE(results.empty());
  const auto j = nlohmann::json::parse(results);
  ASSERT_TRUE(j.contains("needle_words"));
  std::vector<std::string> want = j["needle_words"].get<std::vector<std::string>>();
  std::sort(want.begin(), want.end());
  EXPECT_EQ(Gen().needle_words(), want);
}

TEST(TaskGeneratorTest, DeterministicAndDistinct) {
  for (TaskKind t : AllTasks()) {
    auto a = Gen().Generate(t, 1024, 5);
    auto b = Gen().Generate(t, 1024, 5);
    auto c = Gen().Generate(t, 1024, 6);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    EXPECT_EQ(a->prompt, b->prompt) << TaskName(t);
    EXPECT_EQ(a->answer, b->answer);
    EXPECT_EQ(a->seed, b->seed);
    EXPECT_NE(a->prompt, c->prompt) << TaskName(t);
  }
  // A second generator over the same inputs makes the same cases.
  auto sources = LoadHaystack(kHeldout);
  ASSERT_TRUE(sources.ok());
  auto g2 = TaskGenerator::Create(&Tok(), std::move(*sources));
  ASSERT_TRUE(g2.ok());
  auto x = Gen().Generate(TaskKind::kKv, 2048, 3);
  auto y = (*g2)->Generate(TaskKind::kKv, 2048, 3);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(x->prompt, y->prompt);
  // Another seed base makes other cases.
  auto sources3 = LoadHaystack(kHeldout);
  auto g3 = TaskGenerator::Create(&Tok(), std::move(*sources3), kEvalSeedBase + 1);
  ASSERT_TRUE(g3.ok());
  auto z = (*g3)->Generate(TaskKind::kKv, 2048, 3);
  ASSERT_TRUE(z.ok());
  EXPECT_NE(x->prompt, z->prompt);
}

TEST(TaskGeneratorTest, PromptFormatLengthAndAnswerOccurrences) {
  const std::string heldout = ReadAll(kHeldout);
  for (int32_t len : {1024, 2048, 4096}) {
    for (TaskKind t : AllTasks()) {
      for (int32_t i = 0; i < 4; ++i) {
        auto c = Gen().Generate(t, len, i);
        ASSERT_TRUE(c.ok()) << c.status();
        SCOPED_TRACE(absl::StrCat(std::string(TaskName(t)), " @ ", len, " #", i));
        ASSERT_EQ(static_cast<int32_t>(c->prompt.size()), len - kAnswerTokens);
        EXPECT_EQ(c->prompt.front(), *Tok().TokenToId("<|bos|>"));
        const std::string text = Tok().Decode(c->prompt, /*skip_special_tokens=*/true);
        const std::string tail = absl::StrCat("\n\nQuestion: ", c->question, "\nAnswer:");
        ASSERT_GE(text.size(), tail.size());
        EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
        EXPECT_EQ(Count(text, "Question:"), 1u);
        // The prompt re-tokenizes to the same ids (needles sit at token boundaries).
        auto re = Tok().Encode(text, /*add_special_tokens=*/true);
        ASSERT_TRUE(re.ok());
        EXPECT_EQ(*re, c->prompt);
        switch (t) {
          case TaskKind::kPasskey:
            EXPECT_EQ(c->question, "What is the pass key?");
            EXPECT_EQ(c->answer.size(), 5u);
            EXPECT_EQ(Count(text, absl::StrCat(" The pass key is ", c->answer, ". Remember it. ",
                                               c->answer, " is the pass key.")),
                      1u);
            EXPECT_EQ(Count(text, c->answer), 2u);  // both inside the one needle
            break;
          case TaskKind::kNiahSingle:
          case TaskKind::kNiahMultikey: {
            const std::string word =
                c->question.substr(std::string("What is the special magic number for ").size());
            EXPECT_EQ(
                Count(text, absl::StrCat(" One of the special magic numbers for ",
                                         word.substr(0, word.size() - 1), " is: ", c->answer, ".")),
                1u);
            EXPECT_EQ(Count(text, c->answer), 1u);
            EXPECT_EQ(Count(text, " One of the special magic numbers for "),
                      static_cast<size_t>(c->num_needles));
            if (t == TaskKind::kNiahSingle) {
              EXPECT_EQ(c->num_needles, 1);
            } else {
              EXPECT_GE(c->num_needles, 2);
              EXPECT_LE(c->num_needles, std::min(16, (len - kAnswerTokens) / 160));
            }
            break;
          }
          case TaskKind::kKv: {
            const std::string key =
                c->question.substr(std::string("What is the value for key ").size(), 8);
            EXPECT_EQ(Count(text, absl::StrCat(" The value for key ", key, " is ", c->answer, ".")),
                      1u);
            EXPECT_EQ(Count(text, c->answer), 1u);
            EXPECT_EQ(Count(text, key), 2u);  // the needle and the question
            EXPECT_GE(c->num_needles, 2);
            EXPECT_LE(c->num_needles, std::min(32, (len - kAnswerTokens) / 96));
            break;
          }
          case TaskKind::kVartrack: {
            const std::vector<std::string> vars = absl::StrSplit(c->answer, ' ');
            ASSERT_GE(vars.size(), 2u);
            ASSERT_LE(vars.size(), 5u);
            const std::string value = c->question.substr(
                std::string("Which variables are assigned the value ").size(), 5);
            EXPECT_EQ(Count(text, absl::StrCat(" VAR ", vars[0], " = ", value, ".")), 1u);
            EXPECT_EQ(Count(text, value), 2u);  // the first statement and the question
            size_t prev = text.find(absl::StrCat(" VAR ", vars[0], " = "));
            for (size_t k = 1; k < vars.size(); ++k) {
              const std::string stmt = absl::StrCat(" VAR ", vars[k], " = VAR ", vars[k - 1], ".");
              EXPECT_EQ(Count(text, stmt), 1u);
              const size_t at = text.find(stmt);
              EXPECT_GT(at, prev) << "chain statements are in order";
              prev = at;
              // Each name: its own assignment plus the next hop's reference (the last: one).
              EXPECT_EQ(Count(text, vars[k - 1]), 2u);
            }
            EXPECT_EQ(Count(text, vars.back()), 1u);
            break;
          }
        }
        // Needle values never occur in the haystack: each occurs exactly where placed.
        for (const std::string& v : c->values) EXPECT_GE(Count(text, v), 1u) << v;
        // The haystack pieces between needles are held-out text.
        std::string body = text.substr(0, text.size() - tail.size());
        for (const std::string& marker :
             {std::string(" The pass key is "), std::string(" One of the special magic numbers"),
              std::string(" The value for key "), std::string(" VAR ")}) {
          size_t p;
          while ((p = body.find(marker)) != std::string::npos) {
            const size_t e = body.find('.', p + marker.size() + 6);
            ASSERT_NE(e, std::string::npos);
            // passkey needles hold three sentences.
            size_t end = e + 1;
            if (marker == " The pass key is ") end = body.find("is the pass key.", p) + 16;
            body.replace(p, end - p, "\x01");
          }
        }
        for (const auto& piece : absl::StrSplit(body, '\x01')) {
          if (piece.size() < 40) continue;
          EXPECT_NE(heldout.find(std::string(piece)), std::string::npos)
              << "haystack text not from the held-out file: " << std::string(piece).substr(0, 80);
        }
      }
    }
  }
}

TEST(TaskGeneratorTest, DepthsCoverTheContext) {
  for (TaskKind t : AllTasks()) {
    std::vector<double> depths;
    for (int32_t i = 0; i < 2 * kNumDepths; ++i) {
      auto c = Gen().Generate(t, 2048, i);
      ASSERT_TRUE(c.ok());
      EXPECT_GE(c->depth, 0.0);
      EXPECT_LE(c->depth, 1.0);
      if (HasControlledDepth(t)) {
        EXPECT_DOUBLE_EQ(c->target_depth, static_cast<double>(i % kNumDepths) / (kNumDepths - 1));
        // Sentence boundaries are dense: the needle lands near its target.
        EXPECT_NEAR(c->depth, c->target_depth, 0.06) << TaskName(t) << " #" << i;
      } else {
        EXPECT_LT(c->target_depth, 0);
      }
      depths.push_back(c->depth);
    }
    // The queried needle visits every fifth of the context.
    std::set<int> bins;
    for (double d : depths) bins.insert(std::min(4, static_cast<int>(d * 5)));
    if (HasControlledDepth(t)) {
      EXPECT_EQ(bins.size(), 5u) << TaskName(t);
    } else {
      EXPECT_GE(bins.size(), 3u) << TaskName(t);
    }
  }
}

TEST(TaskGeneratorTest, RejectsBadArguments) {
  EXPECT_EQ(Gen().Generate(TaskKind::kPasskey, 100, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Gen().Generate(TaskKind::kPasskey, 1024, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // No source holds a 64k-token haystack.
  EXPECT_EQ(Gen().Generate(TaskKind::kPasskey, 65536, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(TaskGenerator::Create(&Tok(), {}).ok());
}

TEST(TaskGeneratorTest, ProseWindows) {
  auto w = Gen().ProseWindows(5, 300);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->size(), 5u);
  std::set<std::vector<int32_t>> distinct;
  for (const auto& x : *w) {
    ASSERT_EQ(x.size(), 300u);
    EXPECT_EQ(x[0], *Tok().TokenToId("<|bos|>"));
    distinct.insert(x);
  }
  EXPECT_EQ(distinct.size(), 5u);
  auto again = Gen().ProseWindows(5, 300);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *w);
}

TEST(ScoringTest, ParseAnswerAndExactMatch) {
  EXPECT_EQ(ParseAnswer(" 91469.\nQuestion: What"), "91469");
  EXPECT_EQ(ParseAnswer(" ABCDE FGHIJ.\n"), "ABCDE FGHIJ");
  EXPECT_EQ(ParseAnswer(" 9b1e07aa\nQuestion"), "9b1e07aa");
  EXPECT_EQ(ParseAnswer("  no stop at all "), "no stop at all");
  EXPECT_EQ(ParseAnswer(""), "");
  EXPECT_TRUE(ExactMatch(" 1449563.", "1449563"));
  EXPECT_FALSE(ExactMatch(" 144956.", "1449563"));
  EXPECT_FALSE(ExactMatch(" 14495633.", "1449563"));
  EXPECT_FALSE(ExactMatch(" ABCDE FGHIJ FGHIJ.", "ABCDE FGHIJ"));
}

}  // namespace
}  // namespace kvc::eval
