#include "model/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/tokenizer_bpe.h"
#include "model/tokenizer_decoder.h"
#include "model/tokenizer_json.h"
#include "model/tokenizer_pipeline.h"
#include "model/unicode_utils.h"

namespace kvc {

using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Cat;
using tokenizer_internal::DecoderPipeline;
using tokenizer_internal::FieldError;
using tokenizer_internal::FindField;
using tokenizer_internal::GetBool;
using tokenizer_internal::GetString;
using tokenizer_internal::IndexPath;
using tokenizer_internal::Json;
using tokenizer_internal::Piece;
using tokenizer_internal::ToAbsl;
using tokenizer_internal::ToTokenId;

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat("tokenizer.json '", path, "': cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(Cat("tokenizer.json '", path, "': read error"));
  return FromJson(buffer.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                               std::string_view source_name) {
  const std::string context = Cat("tokenizer.json '", source_name, "'");
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  tokenizer->source_name_ = std::string(source_name);
  try {
    const Json root = Json::parse(json.begin(), json.end());
    if (!root.is_object()) {
      return absl::InvalidArgumentError(Cat(context, ": expected a JSON object"));
    }
    RETURN_IF_ERROR(Annotate(tokenizer->Build(root), context));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(Cat(context, ": ", e.what()));
  }
  return tokenizer;
}

absl::Status Tokenizer::Build(const Json& root) {
  // Model.
  const Json* model = FindField(root, "model");
  if (model == nullptr) return FieldError("model", "missing");
  ASSIGN_OR_RETURN(std::string model_type, GetString(*model, "type", "model",
                                                     FindField(*model, "merges") != nullptr
                                                         ? std::optional<std::string>("BPE")
                                                         : std::nullopt));
  if (model_type != "BPE") {
    return FieldError("model.type",
                      Cat("unsupported model \"", model_type, "\" (kvc supports BPE)"));
  }
  ASSIGN_OR_RETURN(model_, BpeModel::FromJson(*model, "model"));

  // Added tokens.
  if (const Json* added = FindField(root, "added_tokens"); added != nullptr) {
    if (!added->is_array()) return FieldError("added_tokens", "expected an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const Json& t = (*added)[i];
      const std::string path = IndexPath("added_tokens", i);
      AddedToken token;
      ASSIGN_OR_RETURN(const Json* id, tokenizer_internal::RequireField(t, "id", path));
      ASSIGN_OR_RETURN(token.id, ToTokenId(*id, tokenizer_internal::JoinPath(path, "id")));
      ASSIGN_OR_RETURN(token.content, GetString(t, "content", path, std::nullopt));
      if (token.content.empty()) return FieldError(path, "empty content");
      if (!unicode::IsValidUtf8(token.content)) return FieldError(path, "content is not UTF-8");
      ASSIGN_OR_RETURN(token.special, GetBool(t, "special", path, false));
      ASSIGN_OR_RETURN(token.single_word, GetBool(t, "single_word", path, false));
      ASSIGN_OR_RETURN(token.lstrip, GetBool(t, "lstrip", path, false));
      ASSIGN_OR_RETURN(token.rstrip, GetBool(t, "rstrip", path, false));
      ASSIGN_OR_RETURN(token.normalized, GetBool(t, "normalized", path, !token.special));
      if (added_by_content_.contains(token.content)) continue;  // HF ignores duplicates
      added_by_content_[token.content] = token.id;
      added_by_id_[token.id] = added_tokens_.size();
      added_tokens_.push_back(std::move(token));
    }
  }

  // Normalizer, pre-tokenizer, post-processor, decoder.
  if (const Json* n = FindField(root, "normalizer"); n != nullptr) {
    ASSIGN_OR_RETURN(normalizer_, tokenizer_internal::NormalizerFromJson(*n, "normalizer"));
  }
  if (const Json* p = FindField(root, "pre_tokenizer"); p != nullptr) {
    ASSIGN_OR_RETURN(pre_tokenizer_, tokenizer_internal::PreTokenizerFromJson(*p, "pre_tokenizer"));
  }
  if (const Json* p = FindField(root, "post_processor"); p != nullptr) {
    ASSIGN_OR_RETURN(post_processor_,
                     tokenizer_internal::PostProcessorFromJson(*p, "post_processor"));
  }
  ASSIGN_OR_RETURN(decoder_, DecoderPipeline::FromJson(FindField(root, "decoder"), "decoder"));
  if (FindField(root, "truncation") != nullptr || FindField(root, "padding") != nullptr) {
    KVC_LOG(WARNING) << "tokenizer.json '" << source_name_
                     << "': truncation/padding settings are ignored";
  }

  // Added-token matchers: tokens with normalized=false match the raw text, the others match
  // the normalized text (their content normalized the same way). Contents are unique, so the
  // pattern order of HF's tries does not matter.
  std::vector<std::string> raw_patterns(added_tokens_.size());
  std::vector<std::string> normalized_patterns(added_tokens_.size());
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const AddedToken& t = added_tokens_[i];
    if (!t.normalized) {
      raw_patterns[i] = t.content;
    } else {
      normalized_patterns[i] = t.content;
      if (normalizer_ != nullptr) normalizer_->Normalize(&normalized_patterns[i]);
    }
  }
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    AddedToken& t = added_tokens_[i];
    t.decode_text = t.normalized ? normalized_patterns[i] : t.content;
    if (t.special) special_contents_.insert(t.content);
  }
  raw_matcher_ = std::make_unique<AddedTokenMatcher>(&added_tokens_, std::move(raw_patterns));
  normalized_matcher_ =
      std::make_unique<AddedTokenMatcher>(&added_tokens_, std::move(normalized_patterns));

  // Vocabulary size, BOS, EOS.
  int32_t max_id = model_->max_id();
  for (const AddedToken& t : added_tokens_) max_id = std::max(max_id, t.id);
  vocab_size_ = max_id + 1;
  auto named = [this](std::initializer_list<std::string_view> names) -> std::optional<int32_t> {
    for (std::string_view name : names) {
      auto it = added_by_content_.find(ToAbsl(name));
      if (it != added_by_content_.end()) return it->second;
    }
    return std::nullopt;
  };
  const std::vector<int32_t> prefix =
      post_processor_ ? post_processor_->Prefix() : std::vector<int32_t>();
  const std::vector<int32_t> suffix =
      post_processor_ ? post_processor_->Suffix() : std::vector<int32_t>();
  bos_id_ = !prefix.empty()
                ? std::optional<int32_t>(prefix.front())
                : named({"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|bos|>"});
  eos_id_ = named({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"});
  if (!eos_id_.has_value() && !suffix.empty()) eos_id_ = suffix.back();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (std::optional<size_t> bad = unicode::FindInvalidUtf8(text); bad.has_value()) {
    return absl::InvalidArgumentError(
        Cat("Encode: input is not valid UTF-8 (byte offset ", *bad, ")"));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back(Piece{std::string(text), -1, true});
  // 1. Added tokens matched on the raw text; 2. normalization of the rest, then added tokens
  // matched on the normalized text (HF AddedVocabulary::extract_and_normalize).
  raw_matcher_->Split(&pieces);
  if (normalizer_ != nullptr) {
    for (Piece& p : pieces) {
      if (p.id < 0) normalizer_->Normalize(&p.text);
    }
    pieces.erase(std::remove_if(pieces.begin(), pieces.end(),
                                [](const Piece& p) { return p.id < 0 && p.text.empty(); }),
                 pieces.end());
  }
  normalized_matcher_->Split(&pieces);
  if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(&pieces);
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      model_->Tokenize(p.text, &ids);
    }
  }
  if (add_special_tokens && post_processor_ != nullptr) post_processor_->Process(&ids);
  return ids;
}

const std::string* Tokenizer::DecodeToken(int32_t id, bool skip_special_tokens) const {
  const std::string* token = nullptr;
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    token = &added_tokens_[it->second].decode_text;
  } else {
    token = model_->IdToToken(id);
    if (token == nullptr) return nullptr;
  }
  // HF tests the token string (not the id) against the contents of the special tokens.
  if (skip_special_tokens && special_contents_.contains(*token)) return nullptr;
  return token;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  out.reserve(ids.size() * 4);
  auto state = decoder_->NewState();
  for (int32_t id : ids) {
    if (const std::string* token = DecodeToken(id, skip_special_tokens)) {
      decoder_->Push(state.get(), *token, &out);
    }
  }
  decoder_->Flush(state.get(), &out);
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_by_content_.find(ToAbsl(token)); it != added_by_content_.end())
    return it->second;
  return model_->TokenToId(token);
}

std::string Tokenizer::IdToToken(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    return added_tokens_[it->second].decode_text;
  }
  const std::string* token = model_->IdToToken(id);
  return token == nullptr ? std::string() : *token;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_tokens_[it->second].special;
}

// ---------------------------------------------------------------------------------------------

struct StreamDecoder::Impl {
  const Tokenizer* tokenizer;
  bool skip_special_tokens;
  DecoderPipeline::StatePtr state;
};

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens)
    : impl_(new Impl{tokenizer, skip_special_tokens, tokenizer->decoder_->NewState()}) {}
StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;

std::string StreamDecoder::Push(int32_t id) {
  std::string out;
  if (const std::string* token = impl_->tokenizer->DecodeToken(id, impl_->skip_special_tokens)) {
    impl_->tokenizer->decoder_->Push(impl_->state.get(), *token, &out);
  }
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  impl_->tokenizer->decoder_->Flush(impl_->state.get(), &out);
  impl_->state = impl_->tokenizer->decoder_->NewState();
  return out;
}

}  // namespace kvc
