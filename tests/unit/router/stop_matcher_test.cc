#include "router/stop_matcher.h"

#include <random>

#include "gtest/gtest.h"

namespace kvc {
namespace {

std::string FeedAll(StopMatcher& m, const std::vector<std::string>& deltas, bool* stopped) {
  std::string out;
  *stopped = false;
  for (const auto& d : deltas) {
    if (m.Feed(d, &out)) {
      *stopped = true;
      return out;
    }
  }
  return out + m.Flush();
}

TEST(StopMatcherTest, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  bool stopped;
  EXPECT_EQ(FeedAll(m, {"ab", "c", "def"}, &stopped), "abcdef");
  EXPECT_FALSE(stopped);
}

TEST(StopMatcherTest, StopsAcrossDeltaBoundaries) {
  StopMatcher m({"END"});
  bool stopped;
  EXPECT_EQ(FeedAll(m, {"hello E", "N", "D world"}, &stopped), "hello ");
  EXPECT_TRUE(stopped);
}

TEST(StopMatcherTest, HoldsBackOnlyPossiblePrefixes) {
  StopMatcher m({"\n\n"});
  std::string out;
  EXPECT_FALSE(m.Feed("line\n", &out));
  EXPECT_EQ(out, "line");  // the "\n" could start the stop string
  EXPECT_FALSE(m.Feed("x", &out));
  EXPECT_EQ(out, "line\nx");
}

TEST(StopMatcherTest, EarliestOfSeveralStopsWins) {
  StopMatcher m({"bb", "a"});
  bool stopped;
  EXPECT_EQ(FeedAll(m, {"xxbbya"}, &stopped), "xx");
  EXPECT_TRUE(stopped);
}

TEST(StopMatcherTest, FlushReleasesPartialPrefixAtEnd) {
  StopMatcher m({"STOP"});
  bool stopped;
  EXPECT_EQ(FeedAll(m, {"abc", "ST"}, &stopped), "abcST");
  EXPECT_FALSE(stopped);
}

// Property: for random texts split randomly, the output equals the text up to the first
// occurrence of any stop string (or the whole text).
TEST(StopMatcherTest, RandomSplitsMatchTheOneShotAnswer) {
  std::mt19937 rng(7);
  const std::vector<std::string> stops = {"ab", "bca", "cc"};
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    int n = rng() % 30;
    for (int i = 0; i < n; ++i) text += "abcd"[rng() % 4];
    size_t first = std::string::npos;
    for (const auto& s : stops) first = std::min(first, text.find(s));
    std::string expected = first == std::string::npos ? text : text.substr(0, first);
    std::vector<std::string> deltas;
    for (size_t i = 0; i < text.size();) {
      size_t len = 1 + rng() % 4;
      deltas.push_back(text.substr(i, len));
      i += len;
    }
    StopMatcher m(stops);
    bool stopped;
    ASSERT_EQ(FeedAll(m, deltas, &stopped), expected) << text;
    ASSERT_EQ(stopped, first != std::string::npos) << text;
  }
}

}  // namespace
}  // namespace kvc
