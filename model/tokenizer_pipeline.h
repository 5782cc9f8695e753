// The encode-side stages of a Hugging Face tokenizer.json, read from JSON: normalizers
// (Sequence, NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Prepend, Replace, ByteLevel),
// pre-tokenizers (Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit,
// Punctuation, BertPreTokenizer), post-processors (TemplateProcessing, ByteLevel, Sequence,
// RobertaProcessing, BertProcessing) and the added-token matcher (leftmost-longest, with the
// single_word / lstrip / rstrip rules of HF's AddedVocabulary). Internal to model/tokenizer.cc.
//
// Every stage is immutable after construction and safe to use from many threads at once.
#ifndef KVC_MODEL_TOKENIZER_PIPELINE_H_
#define KVC_MODEL_TOKENIZER_PIPELINE_H_

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "model/tokenizer_json.h"
#include "model/tokenizer_regex.h"

namespace kvc::tokenizer_internal {

// A piece of the input during encoding: text still to be tokenized by the model, or an added
// token already resolved to its id.
struct Piece {
  std::string text;
  int32_t id = -1;         // >= 0: an added token; `text` is its matched text
  bool at_origin = false;  // starts at byte 0 of the original input (Metaspace "first")
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(std::string* text) const = 0;
};
// `j` is the tokenizer.json `normalizer` value (not null).
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const Json& j,
                                                               std::string_view path);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) every piece with id < 0; pieces that end up empty are dropped.
  virtual void PreTokenize(std::vector<Piece>* pieces) const = 0;
};
absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const Json& j,
                                                                   std::string_view path);

// Resolves a special-token string of a post-processor to its id(s).
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence around `ids` (add_special_tokens=true).
  virtual void Process(std::vector<int32_t>* ids) const = 0;
  // The ids this processor puts before / after the sequence (empty when none).
  virtual std::vector<int32_t> Prefix() const = 0;
  virtual std::vector<int32_t> Suffix() const = 0;
};
absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const Json& j,
                                                                     std::string_view path);

// The added tokens of tokenizer.json `added_tokens`.
struct AddedToken {
  std::string content;
  // What Decode / IdToToken see: `content`, normalized when `normalized` (HF's
  // normalized_cache).
  std::string decode_text;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// Finds added tokens in text: leftmost match first, the longest one at that position
// (Aho-Corasick LeftmostLongest), then HF's single_word / lstrip / rstrip rules.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is the text to match for `tokens[i]` (its content, or its normalized content).
  AddedTokenMatcher(const std::vector<AddedToken>* tokens, std::vector<std::string> patterns);
  bool empty() const { return num_patterns_ == 0; }
  // Replaces every piece with id < 0 by its splits around the added tokens found in it.
  void Split(std::vector<Piece>* pieces) const;

 private:
  // Leftmost-longest match at or after `from`: sets [*begin, *end) and the token index.
  bool FindNext(std::string_view s, size_t from, size_t* begin, size_t* end, int* token) const;

  const std::vector<AddedToken>* tokens_;
  size_t num_patterns_ = 0;
  std::bitset<256> first_bytes_;
  std::vector<int> terminal_;                     // node -> token index or -1
  absl::flat_hash_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child node
};

}  // namespace kvc::tokenizer_internal

#endif  // KVC_MODEL_TOKENIZER_PIPELINE_H_
