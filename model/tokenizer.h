// Tokenizer: a Hugging Face `tokenizer.json` loaded for encoding and decoding, matching HF
// `tokenizers` (0.23) id for id. Supported: BPE models, byte-level (GPT-2, Llama 3, Qwen2/3) and
// SentencePiece style (Llama 2, Mistral: Prepend/Replace normalizers or a Metaspace
// pre-tokenizer, byte_fallback, unk + fuse_unk), ignore_merges, merges as "a b" or ["a", "b"];
// normalizers NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Prepend, Replace, ByteLevel,
// Sequence; pre-tokenizers Split (PCRE2 with UTF+UCP on the file's exact regex), ByteLevel,
// Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, Sequence;
// added tokens (special, single_word, lstrip, rstrip, normalized); post-processors
// TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence; decoders
// ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence (or none). Anything else
// is rejected at load time with INVALID_ARGUMENT naming the file and the field.
// `truncation` and `padding` of the file are ignored: Encode never truncates or pads.
//
// Ownership and threads: a Tokenizer is immutable after load (an internal word cache is
// mutex-guarded) and may be shared by any number of threads calling Encode/Decode at once.
// A StreamDecoder belongs to one stream (one thread at a time) and borrows its Tokenizer, which
// must outlive it.
#ifndef KVC_MODEL_TOKENIZER_H_
#define KVC_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvc {

namespace tokenizer_internal {
class AddedTokenMatcher;
class BpeModel;
class DecoderPipeline;
class Normalizer;
class PostProcessor;
class PreTokenizer;
struct AddedToken;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Reads and parses a tokenizer.json file. NOT_FOUND when it cannot be read; INVALID_ARGUMENT
  // (message naming the file and the field) when it is malformed or uses something unsupported.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // Same, from the JSON text; `source_name` names it in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             std::string_view source_name);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`. Text equal to an added token's content encodes to that token's id.
  // With add_special_tokens, the post-processor's tokens are added (Llama 2: <s>; Llama 3
  // files with a TemplateProcessing: <|begin_of_text|>; Qwen: nothing). INVALID_ARGUMENT when
  // `text` is not valid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens) const;

  // Text of `ids` (HF `decode`): unknown ids are skipped, special added tokens too when
  // skip_special_tokens. Invalid UTF-8 from byte tokens becomes U+FFFD.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // Largest id (model vocabulary or added token) + 1.
  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of `id` ("" when no token has it); for an added token with
  // normalized=true, its normalized content (as HF).
  std::string IdToToken(int32_t id) const;
  // True for added tokens marked special (the ones Decode skips).
  bool IsSpecial(int32_t id) const;
  // BOS: the first token the post-processor puts before the text, else an added token named
  // <s>, <|begin_of_text|>, <|startoftext|>, <bos> or <|bos|>. EOS: an added token named </s>,
  // <|end_of_text|>, <|endoftext|>, <eos> or <|im_end|> (the first that exists), else the
  // post-processor's token after the text. Serving should prefer the model config's ids when
  // it has them (chat models often end turns with another token, e.g. <|eot_id|>).
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  // The name given to FromJson / the path given to FromFile.
  const std::string& source_name() const { return source_name_; }

 private:
  friend class StreamDecoder;
  Tokenizer();
  absl::Status Build(const nlohmann::json& root);
  // The string the decoder sees for `id`, or nullptr when the id is skipped.
  const std::string* DecodeToken(int32_t id, bool skip_special_tokens) const;

  std::string source_name_;
  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::Normalizer> normalizer_;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_internal::PostProcessor> post_processor_;
  std::unique_ptr<tokenizer_internal::DecoderPipeline> decoder_;
  std::vector<tokenizer_internal::AddedToken> added_tokens_;
  absl::flat_hash_map<int32_t, size_t> added_by_id_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_set<std::string> special_contents_;
  std::unique_ptr<tokenizer_internal::AddedTokenMatcher> raw_matcher_;
  std::unique_ptr<tokenizer_internal::AddedTokenMatcher> normalized_matcher_;
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
};

// Incremental detokenizer for streaming. Push() returns only text that is complete UTF-8 and
// that later tokens cannot change (SentencePiece's leading-space strip, multi-token UTF-8
// characters such as an emoji split over byte-fallback or byte-level tokens). The
// concatenation of all Push() results and Flush() equals tokenizer->Decode(all ids) exactly.
// After Flush() the decoder starts a new, independent stream.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens);
  ~StreamDecoder();
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;

  // Feeds one id; returns the text that became final (often empty).
  std::string Push(int32_t id);
  // Returns whatever is left (incomplete trailing UTF-8 becomes U+FFFD) and resets the stream.
  std::string Flush();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvc

#endif  // KVC_MODEL_TOKENIZER_H_
