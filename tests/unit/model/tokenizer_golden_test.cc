// Golden-vector tests: kvc's Tokenizer against Hugging Face `tokenizers` 0.23.2 on the real
// Llama 3, Llama 2 and Qwen3 tokenizers (scripts/fetch-test-data puts them in .cache/tokenizers),
// on variants of them (tests/fixtures/tokenizers/variants.json) and on tokenizers trained with
// HF (tests/fixtures/tokenizers/trained/). The expected ids and texts were written by
// scripts/gpu/make_tokenizer_golden.py; every string of strings.jsonl must encode to exactly
// HF's ids and decode to exactly HF's text, and streaming decode must equal Decode.
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace kvc {
namespace {

using Json = nlohmann::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<Json> ReadJsonl(const std::string& path) {
  std::vector<Json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(Json::parse(line));
  }
  return out;
}

constexpr char kFixtures[] = "tests/fixtures/tokenizers/";

std::string BasePath(const std::string& base) {
  return ".cache/tokenizers/" + base + "/tokenizer.json";
}

// Builds the tokenizer of a golden set: a real one, a variant of one, or a trained fixture.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& name) {
  if (name == "llama3" || name == "llama2" || name == "qwen3") {
    auto tok = Tokenizer::FromFile(BasePath(name));
    EXPECT_TRUE(tok.ok()) << tok.status() << " (run scripts/fetch-test-data)";
    return tok.ok() ? std::move(tok).value() : nullptr;
  }
  const Json variants = Json::parse(ReadFile(std::string(kFixtures) + "variants.json"));
  if (variants.contains(name)) {
    const Json& spec = variants[name];
    const std::string base_text = ReadFile(BasePath(spec["base"].get<std::string>()));
    EXPECT_FALSE(base_text.empty()) << "run scripts/fetch-test-data";
    if (base_text.empty()) return nullptr;
    Json patched = Json::parse(base_text);
    for (auto it = spec["set"].begin(); it != spec["set"].end(); ++it)
      patched[it.key()] = it.value();
    auto tok = Tokenizer::FromJson(patched.dump(), name);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(tok).value() : nullptr;
  }
  auto tok = Tokenizer::FromFile(std::string(kFixtures) + "trained/" + name + ".json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::vector<int32_t> Ids(const Json& j) { return j.get<std::vector<int32_t>>(); }

std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder stream(&tok, skip);
  std::string out;
  for (int32_t id : ids) out += stream.Push(id);
  out += stream.Flush();
  return out;
}

std::string Show(const std::string& s) { return Json(s).dump(); }
std::string Show(const std::vector<int32_t>& ids) { return Json(ids).dump(); }

struct Counts {
  int encode = 0, encode_ok = 0;
  int decode = 0, decode_ok = 0;
  int stream = 0, stream_ok = 0;
};

// Checks every record of `records` against `tok`; returns the counts and fails the test on any
// mismatch (the first few are printed in full).
Counts CheckRecords(const Tokenizer& tok, const std::vector<Json>& records,
                    const std::string& label) {
  Counts c;
  int printed = 0;
  auto report = [&](const std::string& what) {
    if (printed++ < 8) ADD_FAILURE() << label << ": " << what;
  };
  for (const Json& r : records) {
    if (r.contains("text")) {
      const std::string text = r["text"].get<std::string>();
      for (bool special : {false, true}) {
        const auto want = Ids(r[special ? "ids_special" : "ids"]);
        auto got = tok.Encode(text, special);
        ++c.encode;
        if (got.ok() && *got == want) {
          ++c.encode_ok;
        } else {
          report("encode(" + Show(text) + ", " + (special ? "true" : "false") +
                 ") = " + (got.ok() ? Show(*got) : got.status().ToString()) + ", HF " + Show(want));
        }
      }
      const struct {
        const char* ids_key;
        const char* text_key;
        bool skip;
      } decodes[] = {{"ids", "decoded", false},
                     {"ids_special", "decoded_special", false},
                     {"ids_special", "decoded_skip", true}};
      for (const auto& d : decodes) {
        const auto ids = Ids(r[d.ids_key]);
        const std::string want = r[d.text_key].get<std::string>();
        const std::string got = tok.Decode(ids, d.skip);
        ++c.decode;
        if (got == want) {
          ++c.decode_ok;
        } else {
          report(std::string("decode(") + d.ids_key + " of " + Show(text) + ") = " + Show(got) +
                 ", HF " + Show(want));
        }
        ++c.stream;
        const std::string streamed = StreamDecode(tok, ids, d.skip);
        if (streamed == got) {
          ++c.stream_ok;
        } else {
          report("stream decode of " + Show(ids) + " = " + Show(streamed) + ", Decode " +
                 Show(got));
        }
      }
    } else {
      const auto ids = Ids(r["decode_ids"]);
      for (bool skip : {false, true}) {
        const std::string want = r[skip ? "decoded_skip" : "decoded"].get<std::string>();
        const std::string got = tok.Decode(ids, skip);
        ++c.decode;
        if (got == want) {
          ++c.decode_ok;
        } else {
          report("decode(" + Show(ids) + ", skip=" + (skip ? "true" : "false") +
                 ") = " + Show(got) + ", HF " + Show(want));
        }
        ++c.stream;
        const std::string streamed = StreamDecode(tok, ids, skip);
        if (streamed == got) {
          ++c.stream_ok;
        } else {
          report("stream decode of " + Show(ids) + " = " + Show(streamed) + ", Decode " +
                 Show(got));
        }
      }
    }
  }
  std::cout << "[golden] " << label << ": encode " << c.encode_ok << "/" << c.encode << ", decode "
            << c.decode_ok << "/" << c.decode << ", stream " << c.stream_ok << "/" << c.stream
            << std::endl;
  EXPECT_EQ(c.encode_ok, c.encode) << label;
  EXPECT_EQ(c.decode_ok, c.decode) << label;
  EXPECT_EQ(c.stream_ok, c.stream) << label;
  return c;
}

class RealTokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizerGolden, MatchesHuggingFace) {
  const std::string name = GetParam();
  auto tok = LoadTokenizer(name);
  ASSERT_NE(tok, nullptr);
  const auto records = ReadJsonl(std::string(kFixtures) + "golden_" + name + ".jsonl");
  ASSERT_GE(records.size(), 400u);
  const Counts c = CheckRecords(*tok, records, name);
  EXPECT_GE(c.encode, 800);
}

INSTANTIATE_TEST_SUITE_P(Real, RealTokenizerGolden, ::testing::Values("llama3", "llama2", "qwen3"));

class VariantGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantGolden, MatchesHuggingFace) {
  static const auto* by_variant = [] {
    auto* m = new std::map<std::string, std::vector<Json>>();
    for (Json& r : ReadJsonl(std::string(kFixtures) + "golden_variants.jsonl")) {
      (*m)[r["variant"].get<std::string>()].push_back(std::move(r));
    }
    return m;
  }();
  const std::string name = GetParam();
  auto it = by_variant->find(name);
  ASSERT_NE(it, by_variant->end()) << "no golden records for " << name;
  ASSERT_GE(it->second.size(), 400u);
  auto tok = LoadTokenizer(name);
  ASSERT_NE(tok, nullptr);
  CheckRecords(*tok, it->second, name);
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantGolden,
                         ::testing::Values("llama3_bos", "llama2_metaspace_first",
                                           "llama2_metaspace_always", "qwen3_gpt2_regex",
                                           "qwen3_digits_split", "qwen3_removed_invert",
                                           "bytelevel_plain", "bytelevel_bos_added",
                                           "bytelevel_prefix", "spm_unk"));

// Llama 3 is lossless: decode(encode(s)) == s for every golden string.
TEST(RealTokenizerRoundTrip, Llama3IsLossless) {
  auto tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  int n = 0;
  for (const Json& r : ReadJsonl(std::string(kFixtures) + "golden_llama3.jsonl")) {
    if (!r.contains("text")) continue;
    const std::string text = r["text"].get<std::string>();
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(tok->Decode(*ids, false), text);
    ++n;
  }
  EXPECT_GE(n, 400);
}

// The long text of the HF speed measurement (hf_perf.json): the golden strings joined with "\n",
// repeated 20 times (Python's "\n".join(texts) * 20).
std::string LongText() {
  std::string joined;
  bool first = true;
  for (const Json& r : ReadJsonl(std::string(kFixtures) + "strings.jsonl")) {
    if (!first) joined += "\n";
    first = false;
    joined += r["text"].get<std::string>();
  }
  std::string text;
  for (int i = 0; i < 20; ++i) text += joined;
  return text;
}

// Encodes a ~340 KB text (130k-160k tokens) with each real tokenizer: the ids must have HF's
// count, and the speed must be far from quadratic. Prints tokens/s (cold cache, then warm).
TEST(TokenizerSpeed, LongTextMatchesHfCountAndIsFast) {
  const Json hf = Json::parse(ReadFile(std::string(kFixtures) + "hf_perf.json"));
  const std::string text = LongText();
  for (const std::string name : {"llama3", "llama2", "qwen3"}) {
    auto tok = LoadTokenizer(name);
    ASSERT_NE(tok, nullptr);
    ASSERT_EQ(text.size(), hf[name]["bytes"].get<size_t>());
    for (const char* pass : {"cold", "warm"}) {
      const auto start = std::chrono::steady_clock::now();
      auto ids = tok->Encode(text, false);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ASSERT_TRUE(ids.ok());
      EXPECT_EQ(ids->size(), hf[name]["tokens"].get<size_t>()) << name;
      const double rate = ids->size() / seconds;
      std::cout << "[speed] " << name << " " << pass << ": " << ids->size() << " tokens in "
                << seconds << " s = " << static_cast<int64_t>(rate) << " tokens/s (HF on the GPU "
                << "host: " << static_cast<int64_t>(hf[name]["tokens_per_s"].get<double>()) << ")"
                << std::endl;
      EXPECT_GT(rate, 20000.0) << name << " " << pass;
      const auto dstart = std::chrono::steady_clock::now();
      const std::string decoded = tok->Decode(*ids, false);
      const double dseconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - dstart).count();
      std::cout << "[speed] " << name << " decode: " << static_cast<int64_t>(ids->size() / dseconds)
                << " tokens/s" << std::endl;
      if (name == "llama3") {
        EXPECT_EQ(decoded, text);
      }
    }
  }
}

// Text with few repeated words (pseudo-random words and numbers), so the word cache rarely hits:
// the worst case for a long prompt. Prints tokens/s.
TEST(TokenizerSpeed, UniqueWords) {
  std::string text;
  uint64_t state = 12345;
  auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  };
  while (text.size() < 400000) {
    const int len = 2 + next() % 10;
    for (int i = 0; i < len; ++i) text.push_back(static_cast<char>('a' + next() % 26));
    text += (next() % 8 == 0) ? ", " : " ";
    if (next() % 16 == 0) text += std::to_string(next()) + " ";
  }
  for (const std::string name : {"llama3", "llama2", "qwen3"}) {
    auto tok = LoadTokenizer(name);
    ASSERT_NE(tok, nullptr);
    const auto start = std::chrono::steady_clock::now();
    auto ids = tok->Encode(text, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(ids.ok());
    std::cout << "[speed] " << name << " unique words: " << ids->size() << " tokens in " << seconds
              << " s = " << static_cast<int64_t>(ids->size() / seconds) << " tokens/s" << std::endl;
    EXPECT_GT(ids->size() / seconds, 20000.0) << name;
    EXPECT_EQ(tok->Decode(*ids, false), text) << name;
  }
}

// One enormous word and long runs: the per-word BPE must stay O(n log n).
TEST(TokenizerSpeed, PathologicalInputs) {
  auto tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  for (const std::string& text : {std::string(200000, 'a'), std::string(100000, ' '),
                                  std::string(100000, '7'), std::string(50000, '\n') + "x"}) {
    const auto start = std::chrono::steady_clock::now();
    auto ids = tok->Encode(text, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(ids.ok());
    EXPECT_FALSE(ids->empty());
    EXPECT_EQ(tok->Decode(*ids, false), text);
    EXPECT_LT(seconds, 5.0) << text.substr(0, 10) << "... (" << text.size() << " bytes)";
  }
}

}  // namespace
}  // namespace kvc
