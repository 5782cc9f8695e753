// Unit tests of the tokenizer library on small hand-written tokenizer.json files: byte-level
// and SentencePiece-style BPE, merges ranks and formats, ignore_merges, byte fallback, unk,
// added tokens, post-processors, the streaming decoder, load and encode errors, and the UTF-8 /
// regex helpers.
#include "model/tokenizer.h"

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer_regex.h"
#include "model/unicode_utils.h"
#include "nlohmann/json.hpp"

namespace kvc {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Tokenizer builders.

std::string B(uint8_t b) { return std::string(unicode::ByteToCharUtf8(b)); }

// GPT-2 style: the 256 byte characters (ids 0..255) plus the merges' results.
Json ByteLevelJson(const std::vector<std::pair<std::string, std::string>>& merges,
                   bool pairs_format = true) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[B(static_cast<uint8_t>(b))] = b;
  Json merge_list = Json::array();
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = static_cast<int>(vocab.size());
    if (pairs_format) {
      merge_list.push_back(Json::array({l, r}));
    } else {
      merge_list.push_back(l + " " + r);
    }
  }
  return Json{
      {"version", "1.0"},
      {"added_tokens", Json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
}

const std::vector<std::pair<std::string, std::string>> kHelloMerges = {
    {"h", "e"}, {"l", "l"},   {"he", "ll"},  {"hell", "o"},  {"Ġ", "w"},
    {"o", "r"}, {"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"},
};

Json AddedToken(int id, const std::string& content, bool special, bool lstrip = false,
                bool rstrip = false, bool single_word = false, bool normalized = false) {
  return Json{{"id", id},          {"content", content}, {"single_word", single_word},
              {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
              {"special", special}};
}

// SentencePiece style (Llama 2): ▁-words, byte fallback, Prepend/Replace normalizer, the
// Replace/ByteFallback/Fuse/Strip decoder and a <s> template.
Json SpmJson() {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int next = 259;
  for (const char* t : {"▁",     "h",      "i", "▁h", "▁hi", "e",  "l",  "o",    "▁he", "ll",
                        "▁hell", "▁hello", "w", "r",  "d",   "▁w", "or", "▁wor", "ld",  "▁world"}) {
    vocab[t] = next++;
  }
  const Json merges = Json::array(
      {"▁ h", "▁h i", "▁h e", "l l", "▁he ll", "▁hell o", "▁ w", "o r", "▁w or", "l d", "▁wor ld"});
  return Json{
      {"version", "1.0"},
      {"added_tokens", Json::array({AddedToken(0, "<unk>", true), AddedToken(1, "<s>", true),
                                    AddedToken(2, "</s>", true)})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         Json::array({{{"type", "Prepend"}, {"prepend", "▁"}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", Json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         Json::array({{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merges}}},
  };
}

std::unique_ptr<Tokenizer> Load(const Json& j) {
  auto tok = Tokenizer::FromJson(j.dump(), "test");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& tok, const std::string& text, bool special = false) {
  auto ids = tok.Encode(text, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

int32_t Id(const Tokenizer& tok, const std::string& token) {
  auto id = tok.TokenToId(token);
  EXPECT_TRUE(id.has_value()) << token;
  return id.value_or(-1);
}

std::string StreamAll(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip,
                      std::vector<std::string>* chunks = nullptr) {
  StreamDecoder stream(&tok, skip);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = stream.Push(id);
    if (chunks != nullptr) chunks->push_back(piece);
    out += piece;
  }
  std::string rest = stream.Flush();
  if (chunks != nullptr) chunks->push_back(rest);
  return out + rest;
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE.

TEST(ByteLevelBpe, MergesByRankAndDecodes) {
  auto tok = Load(ByteLevelJson(kHelloMerges));
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello world"), ElementsAre(Id(*tok, "hello"), Id(*tok, "Ġworld")));
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello world"), false), "hello world");
  // "hellow": the GPT-2 regex keeps it one word; no merge makes "hellow".
  EXPECT_THAT(Enc(*tok, "hellow"), ElementsAre(Id(*tok, "hello"), Id(*tok, "w")));
  // Bytes outside ASCII go through the byte alphabet and back.
  const std::string text = "héllo 世界 😀\n\t";
  EXPECT_EQ(tok->Decode(Enc(*tok, text), false), text);
  EXPECT_EQ(tok->vocab_size(), 256 + 9);
  EXPECT_EQ(tok->IdToToken(Id(*tok, "Ġworld")), "Ġworld");
  EXPECT_EQ(tok->IdToToken(100000), "");
  EXPECT_FALSE(tok->TokenToId("nope").has_value());
  EXPECT_FALSE(tok->bos_id().has_value());
  EXPECT_FALSE(tok->eos_id().has_value());
}

TEST(ByteLevelBpe, LowerRankMergesFirstAndTiesGoLeft) {
  // "abc" with a+b ranked before b+c -> [ab, c]; the other way round -> [a, bc].
  auto ab_first = Load(ByteLevelJson({{"a", "b"}, {"b", "c"}}));
  auto bc_first = Load(ByteLevelJson({{"b", "c"}, {"a", "b"}}));
  ASSERT_NE(ab_first, nullptr);
  ASSERT_NE(bc_first, nullptr);
  EXPECT_THAT(Enc(*ab_first, "abc"), ElementsAre(Id(*ab_first, "ab"), Id(*ab_first, "c")));
  EXPECT_THAT(Enc(*bc_first, "abc"), ElementsAre(Id(*bc_first, "a"), Id(*bc_first, "bc")));
  // "aaa" with a+a: the leftmost pair merges first -> [aa, a].
  auto aa = Load(ByteLevelJson({{"a", "a"}}));
  ASSERT_NE(aa, nullptr);
  EXPECT_THAT(Enc(*aa, "aaa"), ElementsAre(Id(*aa, "aa"), Id(*aa, "a")));
  EXPECT_THAT(Enc(*aa, "aaaa"), ElementsAre(Id(*aa, "aa"), Id(*aa, "aa")));
}

TEST(ByteLevelBpe, BothMergeFormatsAgree) {
  auto pairs = Load(ByteLevelJson(kHelloMerges, /*pairs_format=*/true));
  auto strings = Load(ByteLevelJson(kHelloMerges, /*pairs_format=*/false));
  ASSERT_NE(pairs, nullptr);
  ASSERT_NE(strings, nullptr);
  for (const std::string text : {"hello world", "well hello", "low world world"}) {
    EXPECT_EQ(Enc(*pairs, text), Enc(*strings, text)) << text;
  }
}

TEST(ByteLevelBpe, IgnoreMergesTakesVocabularyWordsWhole) {
  Json j = ByteLevelJson({{"a", "b"}});
  j["model"]["vocab"]["abc"] = 300;  // in the vocabulary, but no merge builds it
  auto plain = Load(j);
  j["model"]["ignore_merges"] = true;
  auto ignoring = Load(j);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_THAT(Enc(*plain, "abc"), ElementsAre(Id(*plain, "ab"), Id(*plain, "c")));
  EXPECT_THAT(Enc(*ignoring, "abc"), ElementsAre(300));
  EXPECT_THAT(Enc(*ignoring, "abd"), ElementsAre(Id(*ignoring, "ab"), Id(*ignoring, "d")));
}

TEST(ByteLevelBpe, AddPrefixSpaceAndSplitRegex) {
  Json j = ByteLevelJson(kHelloMerges);
  j["pre_tokenizer"]["add_prefix_space"] = true;
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  // "world" becomes " world".
  EXPECT_THAT(Enc(*tok, "world"), ElementsAre(Id(*tok, "Ġworld")));
  // A Split pre-tokenizer that isolates digits one by one, then ByteLevel without its regex.
  Json k = ByteLevelJson({{"1", "2"}});
  k["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array({{{"type", "Split"},
                     {"pattern", {{"Regex", "\\p{N}"}}},
                     {"behavior", "Isolated"},
                     {"invert", false}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto digits = Load(k);
  ASSERT_NE(digits, nullptr);
  EXPECT_THAT(Enc(*digits, "12"), ElementsAre(Id(*digits, "1"), Id(*digits, "2")));
  k["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}+";
  auto runs = Load(k);
  ASSERT_NE(runs, nullptr);
  EXPECT_THAT(Enc(*runs, "12"), ElementsAre(Id(*runs, "12")));
}

// The configuration of the project's reference model: HF-trained, ByteLevel(add_prefix_space=
// false) + ByteLevel decoder, no post-processor; add_special_tokens adds nothing.
TEST(ByteLevelBpe, ReferenceModelStyleHasNoPostProcessor) {
  Json j = ByteLevelJson(kHelloMerges);
  j["added_tokens"] = Json::array({AddedToken(265, "<|endoftext|>", true)});
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Enc(*tok, "hello world", true), Enc(*tok, "hello world", false));
  EXPECT_EQ(tok->eos_id(), 265);
  EXPECT_THAT(Enc(*tok, "hello<|endoftext|>"), ElementsAre(Id(*tok, "hello"), 265));
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{Id(*tok, "hello"), 265}, false), "hello<|endoftext|>");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{Id(*tok, "hello"), 265}, true), "hello");
  EXPECT_EQ(tok->vocab_size(), 266);
}

// ---------------------------------------------------------------------------------------------
// Added tokens.

TEST(AddedTokens, SplitFirstWithLongestMatch) {
  Json j = ByteLevelJson(kHelloMerges);
  j["added_tokens"] = Json::array(
      {AddedToken(300, "<a>", true), AddedToken(301, "<a><b>", true), AddedToken(302, "x", false)});
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello<a>"), ElementsAre(Id(*tok, "hello"), 300));
  EXPECT_THAT(Enc(*tok, "<a><b>hello"), ElementsAre(301, Id(*tok, "hello")));
  EXPECT_THAT(Enc(*tok, "<a><a>"), ElementsAre(300, 300));
  EXPECT_TRUE(tok->IsSpecial(300));
  EXPECT_FALSE(tok->IsSpecial(302));
  EXPECT_FALSE(tok->IsSpecial(Id(*tok, "hello")));
  // Non-special added tokens survive skip_special_tokens.
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{300, 302, 301}, true), "x");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{300, 302, 301}, false), "<a>x<a><b>");
  EXPECT_EQ(tok->vocab_size(), 303);
}

TEST(AddedTokens, StripAndSingleWord) {
  Json j = ByteLevelJson(kHelloMerges);
  j["added_tokens"] = Json::array({AddedToken(300, "<t>", true, /*lstrip=*/true, /*rstrip=*/true),
                                   AddedToken(301, "[S]", true, false, false,
                                              /*single_word=*/true)});
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  // lstrip/rstrip: the spaces around <t> belong to it.
  EXPECT_THAT(Enc(*tok, "hello  <t>  hello"),
              ElementsAre(Id(*tok, "hello"), 300, Id(*tok, "hello")));
  // single_word: only between non-word characters.
  EXPECT_THAT(Enc(*tok, "hello [S] hello"),
              ElementsAre(Id(*tok, "hello"), Id(*tok, "Ġ"), 301, Id(*tok, "Ġ"), Id(*tok, "hello")));
  const auto inside = Enc(*tok, "hello[S]hello");
  EXPECT_EQ(std::count(inside.begin(), inside.end(), 301), 0);
}

TEST(AddedTokens, NormalizedTokensMatchNormalizedText) {
  Json j = ByteLevelJson({{"f", "i"}, {"fi", "x"}});
  j["normalizer"] = {{"type", "NFKC"}};
  j["added_tokens"] = Json::array({AddedToken(400, "ﬁx", false, false, false, false,
                                              /*normalized=*/true)});
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  // NFKC("ﬁx") = "fix": both spellings of the text find the token.
  EXPECT_THAT(Enc(*tok, "fix"), ElementsAre(400));
  EXPECT_THAT(Enc(*tok, "ﬁx"), ElementsAre(400));
  // HF decodes a normalized added token as its normalized form.
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{400}, false), "fix");
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE.

TEST(SentencePieceBpe, PrependReplaceAndTemplate) {
  auto tok = Load(SpmJson());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hello world"), ElementsAre(Id(*tok, "▁hello"), Id(*tok, "▁world")));
  EXPECT_THAT(Enc(*tok, "hello world", true),
              ElementsAre(1, Id(*tok, "▁hello"), Id(*tok, "▁world")));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello world"), false), "hello world");
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello world", true), false), "<s> hello world");
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello world", true), true), "hello world");
  // Each piece around an added token gets its own "▁" (HF's legacy behaviour).
  EXPECT_THAT(Enc(*tok, "hi<s>hi"), ElementsAre(Id(*tok, "▁hi"), 1, Id(*tok, "▁hi")));
  EXPECT_TRUE(Enc(*tok, "").empty());
  EXPECT_THAT(Enc(*tok, "", true), ElementsAre(1));
}

TEST(SentencePieceBpe, ByteFallbackRoundTrips) {
  auto tok = Load(SpmJson());
  ASSERT_NE(tok, nullptr);
  // "é" (C3 A9) and "😀" (F0 9F 98 80) are not in the vocabulary: byte tokens.
  const auto ids = Enc(*tok, "hé 😀");
  EXPECT_THAT(ids, ElementsAre(Id(*tok, "▁h"), Id(*tok, "<0xC3>"), Id(*tok, "<0xA9>"),
                               Id(*tok, "▁"), Id(*tok, "<0xF0>"), Id(*tok, "<0x9F>"),
                               Id(*tok, "<0x98>"), Id(*tok, "<0x80>")));
  EXPECT_EQ(tok->Decode(ids, false), "hé 😀");
  // A broken byte run decodes to one U+FFFD per byte (HF ByteFallback).
  EXPECT_EQ(
      tok->Decode(std::vector<int32_t>{Id(*tok, "<0xF0>"), Id(*tok, "<0x9F>"), Id(*tok, "▁hi")},
                  false),
      "\xEF\xBF\xBD\xEF\xBF\xBD hi");
}

TEST(SentencePieceBpe, UnknownCharactersFuse) {
  Json j = SpmJson();
  j["model"]["byte_fallback"] = false;
  auto fused = Load(j);
  j["model"]["fuse_unk"] = false;
  auto separate = Load(j);
  ASSERT_NE(fused, nullptr);
  ASSERT_NE(separate, nullptr);
  EXPECT_THAT(Enc(*fused, "h€€"), ElementsAre(Id(*fused, "▁h"), 0));
  EXPECT_THAT(Enc(*separate, "h€€"), ElementsAre(Id(*separate, "▁h"), 0, 0));
}

TEST(SentencePieceBpe, MetaspacePreTokenizerPrependFirst) {
  Json j = SpmJson();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  auto tok = Load(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Enc(*tok, "hi hi"), ElementsAre(Id(*tok, "▁hi"), Id(*tok, "▁hi")));
  // Only the piece at the start of the text gets "▁": after <s> "hi" stays bare.
  EXPECT_THAT(Enc(*tok, "<s>hi"), ElementsAre(1, Id(*tok, "h"), Id(*tok, "i")));
  j["pre_tokenizer"]["prepend_scheme"] = "always";
  auto always = Load(j);
  ASSERT_NE(always, nullptr);
  EXPECT_THAT(Enc(*always, "<s>hi"), ElementsAre(1, Id(*always, "▁hi")));
}

// ---------------------------------------------------------------------------------------------
// Streaming decode.

TEST(StreamDecoder, HoldsSplitUtf8UntilComplete) {
  auto tok = Load(ByteLevelJson(kHelloMerges));
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = {Id(*tok, "hello"), 0xF0, 0x9F, 0x98, 0x80, Id(*tok, "Ġworld")};
  std::vector<std::string> chunks;
  EXPECT_EQ(StreamAll(*tok, ids, false, &chunks), "hello😀 world");
  EXPECT_THAT(chunks, ElementsAre("hello", "", "", "", "😀", " world", ""));
  // A truncated character is only given up at Flush, as U+FFFD.
  StreamDecoder stream(tok.get(), false);
  EXPECT_EQ(stream.Push(0xF0), "");
  EXPECT_EQ(stream.Push(0x9F), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0xF0, 0x9F}, false), "\xEF\xBF\xBD");
}

TEST(StreamDecoder, SentencePieceStripsOnlyTheFirstSpace) {
  auto tok = Load(SpmJson());
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = {Id(*tok, "▁hello"), Id(*tok, "▁world"), Id(*tok, "<0xF0>"),
                                    Id(*tok, "<0x9F>"), Id(*tok, "<0x98>"), Id(*tok, "<0x80>"),
                                    Id(*tok, "▁hi")};
  std::vector<std::string> chunks;
  EXPECT_EQ(StreamAll(*tok, ids, false, &chunks), "hello world😀 hi");
  EXPECT_THAT(chunks, ElementsAre("hello", " world", "", "", "", "", "😀 hi", ""));
  // Strip(start=1) removes one space only.
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{Id(*tok, "▁"), Id(*tok, "▁hi")}, false), " hi");
  EXPECT_EQ(StreamAll(*tok, {Id(*tok, "▁"), Id(*tok, "▁"), Id(*tok, "▁hi")}, false), "  hi");
  // After Flush a new stream starts: its first space is stripped again.
  StreamDecoder stream(tok.get(), false);
  EXPECT_EQ(stream.Push(Id(*tok, "▁hi")), "hi");
  EXPECT_EQ(stream.Flush(), "");
  EXPECT_EQ(stream.Push(Id(*tok, "▁hi")), "hi");
  // Skipped special tokens do not count as text.
  StreamDecoder skipping(tok.get(), true);
  EXPECT_EQ(skipping.Push(1), "");
  EXPECT_EQ(skipping.Push(Id(*tok, "▁hi")), "hi");
}

TEST(StreamDecoder, ConcatenationEqualsDecodeOnRandomIds) {
  auto byte_level = Load(ByteLevelJson(kHelloMerges));
  auto spm = Load(SpmJson());
  ASSERT_NE(byte_level, nullptr);
  ASSERT_NE(spm, nullptr);
  std::mt19937 rng(7);
  for (const Tokenizer* tok : {byte_level.get(), spm.get()}) {
    std::uniform_int_distribution<int32_t> id(0, tok->vocab_size() + 2);  // a few unknown ids
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int32_t> ids(1 + rng() % 20);
      for (int32_t& x : ids) x = id(rng);
      for (bool skip : {false, true}) {
        EXPECT_EQ(StreamAll(*tok, ids, skip), tok->Decode(ids, skip));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST(TokenizerErrors, MalformedFilesNameTheFileAndField) {
  auto bad_json = Tokenizer::FromJson("{not json", "broken.json");
  ASSERT_FALSE(bad_json.ok());
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_json.status().message()), HasSubstr("broken.json"));

  auto check = [](Json j, const std::string& field) {
    auto tok = Tokenizer::FromJson(j.dump(), "my/tokenizer.json");
    ASSERT_FALSE(tok.ok()) << field;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("my/tokenizer.json")) << field;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(field));
  };
  Json j = ByteLevelJson(kHelloMerges);
  j.erase("model");
  check(j, "model: missing");
  j = ByteLevelJson(kHelloMerges);
  j["model"]["merges"][1] = Json::array({"l", "zzz"});
  check(j, "model.merges[1]");
  j = ByteLevelJson(kHelloMerges);
  j["model"]["merges"][2] = "he ll o";
  check(j, "model.merges[2]");
  j = ByteLevelJson(kHelloMerges);
  j["model"]["vocab"]["h"] = "seven";
  check(j, "model.vocab.h");
  j = ByteLevelJson(kHelloMerges);
  j["model"]["type"] = "Unigram";
  check(j, "model.type");
  j = ByteLevelJson(kHelloMerges);
  j["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  check(j, "pre_tokenizer.type");
  j = ByteLevelJson(kHelloMerges);
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  check(j, "pre_tokenizer.pattern.Regex");
  j = ByteLevelJson(kHelloMerges);
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  check(j, "pre_tokenizer.behavior");
  j = ByteLevelJson(kHelloMerges);
  j["decoder"] = {{"type", "Sequence"}, {"decoders", Json::array({{{"type", "CTC"}}})}};
  check(j, "decoder.decoders[0].type");
  j = ByteLevelJson(kHelloMerges);
  j["normalizer"] = {{"type", "Precompiled"}};
  check(j, "normalizer.type");
  j = ByteLevelJson(kHelloMerges);
  j["added_tokens"] = Json::array({{{"id", -3}, {"content", "<x>"}}});
  check(j, "added_tokens[0].id");
  j = SpmJson();
  j["post_processor"]["special_tokens"] = Json::object();
  check(j, "post_processor.special_tokens");
  j = SpmJson();
  j["model"]["unk_token"] = "<nope>";
  check(j, "model.unk_token");
  j = SpmJson();
  j["model"]["dropout"] = 0.1;
  check(j, "model.dropout");
}

TEST(TokenizerErrors, MissingFileAndInvalidUtf8) {
  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/tokenizer.json"));

  auto tok = Load(ByteLevelJson(kHelloMerges));
  ASSERT_NE(tok, nullptr);
  for (const std::string& bad : {std::string("abc\xFF"), std::string("\xC0\x80"),
                                 std::string("x\xED\xA0\x80"), std::string("\xE2\x82")}) {
    auto ids = tok->Encode(bad, false);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ids.status().message()), HasSubstr("UTF-8"));
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrency: one tokenizer, many threads, same results.

TEST(TokenizerThreads, ConcurrentEncodeDecodeAgree) {
  auto tok = Load(SpmJson());
  ASSERT_NE(tok, nullptr);
  const std::vector<std::string> texts = {"hello world", "hi hé 😀", "world world hello", "€x"};
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(Enc(*tok, t, true));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const size_t k = (i + t) % texts.size();
        auto ids = tok->Encode(texts[k], true);
        if (!ids.ok() || *ids != expected[k] ||
            tok->Decode(*ids, true) != tok->Decode(expected[k], true)) {
          ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Helpers.

TEST(UnicodeUtils, LossyDecodingMatchesRust) {
  // Maximal invalid subparts: E2 82 is one, then 'A'; F0 80: F0 alone, then 80 alone.
  EXPECT_EQ(unicode::LossyUtf8("\xE2\x82"
                               "A"),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(unicode::LossyUtf8("\xF0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::LossyUtf8("a\xFF"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(unicode::LossyUtf8("\xE2\x82"), "\xEF\xBF\xBD");  // truncated at the end: one
  std::string out;
  EXPECT_EQ(unicode::DecodeLossy("ab\xE2\x82", /*final=*/false, &out), 2u);
  EXPECT_EQ(out, "ab");
  EXPECT_FALSE(unicode::IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(unicode::IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(unicode::IsValidUtf8("\xC1\xBF"));          // overlong
  EXPECT_TRUE(unicode::IsValidUtf8("\xF4\x8F\xBF\xBF"));
  EXPECT_EQ(unicode::FindInvalidUtf8("abcdefghij\xFF"), 10u);
}

TEST(UnicodeUtils, ByteAlphabetAndNormalization) {
  EXPECT_EQ(unicode::ByteToCharUtf8(' '), "Ġ");
  EXPECT_EQ(unicode::ByteToCharUtf8('\n'), "Ċ");
  EXPECT_EQ(unicode::ByteToCharUtf8('a'), "a");
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(unicode::CharToByte(unicode::ByteToChar(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(unicode::Normalize("cafe\xCC\x81", unicode::NormalizationForm::kNFC), "café");
  EXPECT_EQ(unicode::Normalize("ﬁ", unicode::NormalizationForm::kNFKC), "fi");
  EXPECT_EQ(unicode::Lowercase("ÀB İ"), "àb i\xCC\x87");
  EXPECT_TRUE(unicode::IsWhitespace(0x3000));
  EXPECT_FALSE(unicode::IsWhitespace(0x180E));
  EXPECT_FALSE(unicode::IsWhitespace(0x200B));
}

TEST(RegexTranslation, SpacesFollowOniguruma) {
  using tokenizer_internal::Regex;
  auto re = Regex::Compile("\\s+");
  ASSERT_TRUE(re.ok());
  std::vector<std::pair<size_t, size_t>> m;
  (*re)->FindAll(
      "a \xE1\xA0\x8E b\xE3\x80\x80"
      "c",
      &m);  // U+180E is not a space
  EXPECT_THAT(m,
              ElementsAre(std::make_pair(1u, 2u), std::make_pair(5u, 6u), std::make_pair(7u, 10u)));
  auto neg = Regex::Compile("[^\\s\\p{L}]+");
  ASSERT_TRUE(neg.ok());
  m.clear();
  (*neg)->FindAll("ab 12!\tc", &m);
  EXPECT_THAT(m, ElementsAre(std::make_pair(3u, 6u)));
  EXPECT_EQ(tokenizer_internal::TranslatePattern("\\Q\\s\\E[\\]\\s]"),
            std::string("\\Q\\s\\E[\\]") +
                "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}"
                "\\x{2029}\\x{202f}\\x{205f}\\x{3000}]");
}

}  // namespace
}  // namespace kvc
