#include "model/tokenizer_pipeline.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/unicode_utils.h"

namespace kvc::tokenizer_internal {

absl::StatusOr<char32_t> GetChar(const Json& obj, std::string_view key, std::string_view path,
                                 std::optional<char32_t> default_value) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) {
    if (default_value.has_value()) return *default_value;
    return FieldError(JoinPath(path, key), "missing");
  }
  if (!f->is_string()) {
    return FieldError(JoinPath(path, key), Cat("expected a string, got ", f->type_name()));
  }
  const std::string& s = f->get_ref<const std::string&>();
  if (s.empty() || !unicode::IsValidUtf8(s) || unicode::Utf8SeqLen(s[0]) != s.size()) {
    return FieldError(JoinPath(path, key), Cat("expected one character, got \"", s, "\""));
  }
  size_t pos = 0;
  return unicode::DecodeUtf8At(s, &pos);
}

namespace {

using Range = std::pair<size_t, size_t>;

// ---------------------------------------------------------------------------------------------
// Splitting (HF NormalizedString::split with a SplitDelimiterBehavior).

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& obj, std::string_view path,
                                            std::optional<SplitBehavior> default_value) {
  const Json* f = FindField(obj, "behavior");
  if (f == nullptr && default_value.has_value()) return *default_value;
  ASSIGN_OR_RETURN(std::string name, GetString(obj, "behavior", path, std::nullopt));
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return FieldError(JoinPath(path, "behavior"), Cat("unknown split behavior \"", name, "\""));
}

// `matches`: sorted, non-overlapping delimiter ranges in a text of `n` bytes. Returns the ranges
// to keep, in order (empty ones included; callers drop them).
std::vector<Range> ApplySplit(size_t n, const std::vector<Range>& matches, bool invert,
                              SplitBehavior behavior) {
  struct Span {
    size_t begin, end;
    bool match;
  };
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const Range& m : matches) {
    if (prev != m.first) spans.push_back({prev, m.first, false});
    spans.push_back({m.first, m.second, true});
    prev = m.second;
  }
  if (prev != n) spans.push_back({prev, n, false});
  if (invert) {
    for (Span& s : spans) s.match = !s.match;
  }
  std::vector<Range> out;
  out.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.match) out.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

// One match per character for which `pred` holds (HF's `Fn(char) -> bool` patterns).
template <typename Pred>
std::vector<Range> CharMatches(std::string_view s, Pred pred) {
  std::vector<Range> matches;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t begin = pos;
    const char32_t cp = unicode::DecodeUtf8At(s, &pos);
    if (pred(cp)) matches.emplace_back(begin, pos);
  }
  return matches;
}

// Applies `fn(Piece&&, std::vector<Piece>* out)` to every piece still to be tokenized.
template <typename Fn>
void ForEachPiece(std::vector<Piece>* pieces, Fn fn) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  for (Piece& p : *pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    fn(std::move(p), &out);
  }
  pieces->swap(out);
}

void EmitRanges(const Piece& p, const std::vector<Range>& ranges, std::vector<Piece>* out) {
  for (const Range& r : ranges) {
    if (r.second > r.first) {
      out->push_back(
          Piece{p.text.substr(r.first, r.second - r.first), -1, p.at_origin && r.first == 0});
    }
  }
}

absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const Json& obj, std::string_view path) {
  ASSIGN_OR_RETURN(const Json* pattern, RequireField(obj, "pattern", path));
  const std::string ppath = JoinPath(path, "pattern");
  if (pattern->is_string()) return Regex::Literal(pattern->get<std::string>());
  if (pattern->is_object()) {
    if (const Json* s = FindField(*pattern, "String"); s != nullptr && s->is_string()) {
      return Regex::Literal(s->get<std::string>());
    }
    if (const Json* r = FindField(*pattern, "Regex"); r != nullptr && r->is_string()) {
      auto regex = Regex::Compile(r->get<std::string>());
      if (!regex.ok()) return FieldError(JoinPath(ppath, "Regex"), ToStd(regex.status().message()));
      return regex;
    }
  }
  return FieldError(ppath, "expected {\"String\": ...} or {\"Regex\": ...}");
}

std::string ReplaceAll(const Regex& pattern, std::string_view text, std::string_view content) {
  std::vector<Range> matches;
  pattern.FindAll(text, &matches);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size() + matches.size() * content.size());
  size_t prev = 0;
  for (const Range& m : matches) {
    out.append(text.substr(prev, m.first - prev));
    out.append(content);
    prev = m.second;
  }
  out.append(text.substr(prev));
  return out;
}

std::string ByteLevelMap(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out.append(unicode::ByteToCharUtf8(static_cast<uint8_t>(c)));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Normalizers.

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& n : parts_) n->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::NormalizationForm form) : form_(form) {}
  void Normalize(std::string* text) const override { *text = unicode::Normalize(*text, form_); }

 private:
  unicode::NormalizationForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = unicode::Lowercase(*text); }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t begin = 0;
    size_t end = text->size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8At(*text, &next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80) {
          --start;
        }
        size_t next = start;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8At(*text, &next))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    size_t pos = 0;
    while (pos < text->size()) {
      const size_t begin = pos;
      const char32_t cp = unicode::DecodeUtf8At(*text, &pos);
      if (unicode::IsMark(cp)) continue;
      out.append(*text, begin, pos - begin);
    }
    *text = std::move(out);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    *text = ReplaceAll(*pattern_, *text, content_);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = ByteLevelMap(*text); }
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers.

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& p : parts_) p->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [this](Piece&& p, std::vector<Piece>* out) {
      std::vector<Range> matches;
      pattern_->FindAll(p.text, &matches);
      EmitRanges(p, ApplySplit(p.text.size(), matches, invert_, behavior_), out);
    });
  }

 private:
  std::unique_ptr<Regex> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on characters for which `pred` holds.
template <typename Pred>
class CharSplitPreTokenizer : public PreTokenizer {
 public:
  CharSplitPreTokenizer(Pred pred, SplitBehavior behavior) : pred_(pred), behavior_(behavior) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [this](Piece&& p, std::vector<Piece>* out) {
      EmitRanges(p, ApplySplit(p.text.size(), CharMatches(p.text, pred_), false, behavior_), out);
    });
  }

 private:
  Pred pred_;
  SplitBehavior behavior_;
};

template <typename Pred>
std::unique_ptr<PreTokenizer> MakeCharSplit(Pred pred, SplitBehavior behavior) {
  return std::make_unique<CharSplitPreTokenizer<Pred>>(pred, behavior);
}

const Regex& Gpt2Regex() {
  static const Regex* regex =
      Regex::Compile(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)")
          .value()
          .release();
  return *regex;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [this](Piece&& p, std::vector<Piece>* out) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (!use_regex_) {
        if (!p.text.empty()) out->push_back(Piece{ByteLevelMap(p.text), -1, p.at_origin});
        return;
      }
      std::vector<Range> matches;
      Gpt2Regex().FindAll(p.text, &matches);
      for (const Range& r : ApplySplit(p.text.size(), matches, false, SplitBehavior::kIsolated)) {
        if (r.second > r.first) {
          out->push_back(
              Piece{ByteLevelMap(std::string_view(p.text).substr(r.first, r.second - r.first)), -1,
                    p.at_origin && r.first == 0});
        }
      }
    });
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(char32_t replacement, Prepend prepend, bool split)
      : replacement_(replacement),
        rep_(unicode::EncodeUtf8(replacement)),
        prepend_(prepend),
        split_(split) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    ForEachPiece(pieces, [this](Piece&& p, std::vector<Piece>* out) {
      std::string text;
      text.reserve(p.text.size() + 8);
      for (char c : p.text) {
        if (c == ' ') {
          text += rep_;
        } else {
          text.push_back(c);
        }
      }
      const bool starts_with_rep = text.compare(0, rep_.size(), rep_) == 0;
      if (!starts_with_rep &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_origin))) {
        text.insert(0, rep_);
      }
      p.text = std::move(text);
      if (!split_) {
        if (!p.text.empty()) out->push_back(std::move(p));
        return;
      }
      const char32_t rep = replacement_;
      EmitRanges(
          p,
          ApplySplit(p.text.size(), CharMatches(p.text, [rep](char32_t c) { return c == rep; }),
                     false, SplitBehavior::kMergedWithNext),
          out);
    });
  }

 private:
  char32_t replacement_;
  std::string rep_;
  Prepend prepend_;
  bool split_;
};

bool IsBertPunctuation(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
           (cp >= 123 && cp <= 126);
  }
  return unicode::IsPunctuation(cp);
}

// ---------------------------------------------------------------------------------------------
// Post-processors.

class TemplatePostProcessor : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;  // special token ids when !is_sequence
  };
  explicit TemplatePostProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  void Process(std::vector<int32_t>* ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids->size() + 4);
    for (const Item& item : items_) {
      if (item.is_sequence) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    ids->swap(out);
  }
  std::vector<int32_t> Prefix() const override {
    std::vector<int32_t> out;
    for (const Item& item : items_) {
      if (item.is_sequence) break;
      out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    return out;
  }
  std::vector<int32_t> Suffix() const override {
    std::vector<int32_t> out;
    bool after = false;
    for (const Item& item : items_) {
      if (item.is_sequence) {
        after = true;
        out.clear();
      } else if (after) {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    return out;
  }

 private:
  std::vector<Item> items_;
};

class NoopPostProcessor : public PostProcessor {
 public:
  void Process(std::vector<int32_t>*) const override {}
  std::vector<int32_t> Prefix() const override { return {}; }
  std::vector<int32_t> Suffix() const override { return {}; }
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void Process(std::vector<int32_t>* ids) const override {
    for (const auto& p : parts_) p->Process(ids);
  }
  std::vector<int32_t> Prefix() const override {
    std::vector<int32_t> out;
    for (const auto& p : parts_) {
      std::vector<int32_t> pre = p->Prefix();
      out.insert(out.begin(), pre.begin(), pre.end());
    }
    return out;
  }
  std::vector<int32_t> Suffix() const override {
    std::vector<int32_t> out;
    for (const auto& p : parts_) {
      std::vector<int32_t> suf = p->Suffix();
      out.insert(out.end(), suf.begin(), suf.end());
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<TemplatePostProcessor::Item> ParseTemplatePiece(const Json& piece,
                                                               const Json* special_tokens,
                                                               std::string_view path,
                                                               std::string_view special_path) {
  std::string special_name;
  if (piece.is_string()) {  // "$A", "$0", "<s>", "<s>:1"
    const std::string& s = piece.get_ref<const std::string&>();
    const std::string id = s.substr(0, s.find(':'));
    if (!id.empty() && id[0] == '$') return TemplatePostProcessor::Item{true, {}};
    special_name = id;
  } else if (const Json* seq = FindField(piece, "Sequence"); seq != nullptr) {
    return TemplatePostProcessor::Item{true, {}};
  } else if (const Json* sp = FindField(piece, "SpecialToken"); sp != nullptr) {
    ASSIGN_OR_RETURN(special_name,
                     GetString(*sp, "id", JoinPath(path, "SpecialToken"), std::nullopt));
  } else {
    return FieldError(path, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
  }
  const Json* entry =
      special_tokens == nullptr ? nullptr : FindField(*special_tokens, special_name);
  if (entry == nullptr) {
    return FieldError(special_path, Cat("no entry for special token \"", special_name,
                                        "\" used in the template"));
  }
  const std::string entry_path = JoinPath(special_path, special_name);
  ASSIGN_OR_RETURN(const Json* ids, RequireField(*entry, "ids", entry_path));
  if (!ids->is_array()) return FieldError(JoinPath(entry_path, "ids"), "expected an array");
  TemplatePostProcessor::Item item{false, {}};
  for (size_t i = 0; i < ids->size(); ++i) {
    ASSIGN_OR_RETURN(int32_t id, ToTokenId((*ids)[i], IndexPath(JoinPath(entry_path, "ids"), i)));
    item.ids.push_back(id);
  }
  return item;
}

absl::StatusOr<int32_t> ParseTokenPair(const Json& obj, std::string_view key,
                                       std::string_view path) {
  ASSIGN_OR_RETURN(const Json* pair, RequireField(obj, key, path));
  if (!pair->is_array() || pair->size() != 2) {
    return FieldError(JoinPath(path, key), "expected [\"token\", id]");
  }
  return ToTokenId((*pair)[1], IndexPath(JoinPath(path, key), 1));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Factories.

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const Json& j,
                                                               std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, GetString(j, "type", path, std::nullopt));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, RequireField(j, "normalizers", path));
    const std::string lpath = JoinPath(path, "normalizers");
    if (!list->is_array()) return FieldError(lpath, "expected an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, NormalizerFromJson((*list)[i], IndexPath(lpath, i)));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(parts)));
  }
  if (type == "NFC")
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNFC));
  if (type == "NFD")
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNFD));
  if (type == "NFKC")
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNFKC));
  if (type == "NFKD")
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNFKD));
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "StripAccents") return std::unique_ptr<Normalizer>(new StripAccentsNormalizer());
  if (type == "ByteLevel") return std::unique_ptr<Normalizer>(new ByteLevelNormalizer());
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, GetBool(j, "strip_left", path, true));
    ASSIGN_OR_RETURN(bool right, GetBool(j, "strip_right", path, true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prepend, GetString(j, "prepend", path, std::nullopt));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prepend)));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(j, path));
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", path, std::nullopt));
    return std::unique_ptr<Normalizer>(
        new ReplaceNormalizer(std::move(pattern), std::move(content)));
  }
  return FieldError(JoinPath(path, "type"), Cat("unsupported normalizer \"", type, "\""));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const Json& j,
                                                                   std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, GetString(j, "type", path, std::nullopt));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, RequireField(j, "pretokenizers", path));
    const std::string lpath = JoinPath(path, "pretokenizers");
    if (!list->is_array()) return FieldError(lpath, "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, PreTokenizerFromJson((*list)[i], IndexPath(lpath, i)));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(parts)));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(j, path));
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(j, path, std::nullopt));
    ASSIGN_OR_RETURN(bool invert, GetBool(j, "invert", path, false));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(pattern), behavior, invert));
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", path, true));
    ASSIGN_OR_RETURN(bool use_regex, GetBool(j, "use_regex", path, true));
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, use_regex));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(char32_t replacement, GetChar(j, "replacement", path, U'\u2581'));
    ASSIGN_OR_RETURN(std::string scheme, GetString(j, "prepend_scheme", path, "always"));
    MetaspacePreTokenizer::Prepend prepend;
    if (scheme == "always") {
      prepend = MetaspacePreTokenizer::Prepend::kAlways;
    } else if (scheme == "first") {
      prepend = MetaspacePreTokenizer::Prepend::kFirst;
    } else if (scheme == "never") {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    } else {
      return FieldError(JoinPath(path, "prepend_scheme"),
                        Cat("unknown prepend scheme \"", scheme, "\""));
    }
    // Legacy files carry add_prefix_space instead; false means "never".
    if (const Json* aps = FindField(j, "add_prefix_space");
        aps != nullptr && aps->is_boolean() && !aps->get<bool>()) {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    }
    ASSIGN_OR_RETURN(bool split, GetBool(j, "split", path, true));
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(replacement, prepend, split));
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual, GetBool(j, "individual_digits", path, false));
    return MakeCharSplit([](char32_t c) { return unicode::IsNumeric(c); },
                         individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "WhitespaceSplit") {
    return MakeCharSplit([](char32_t c) { return unicode::IsWhitespace(c); },
                         SplitBehavior::kRemoved);
  }
  if (type == "Whitespace") {
    ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\w+|[^\w\s]+)"));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(regex), SplitBehavior::kRemoved, /*invert=*/true));
  }
  if (type == "Punctuation") {
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(j, path, SplitBehavior::kIsolated));
    return MakeCharSplit([](char32_t c) { return IsBertPunctuation(c); }, behavior);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(MakeCharSplit([](char32_t c) { return unicode::IsWhitespace(c); },
                                  SplitBehavior::kRemoved));
    parts.push_back(
        MakeCharSplit([](char32_t c) { return IsBertPunctuation(c); }, SplitBehavior::kIsolated));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(parts)));
  }
  return FieldError(JoinPath(path, "type"), Cat("unsupported pre-tokenizer \"", type, "\""));
}

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const Json& j,
                                                                     std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, GetString(j, "type", path, std::nullopt));
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new NoopPostProcessor());
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, RequireField(j, "processors", path));
    const std::string lpath = JoinPath(path, "processors");
    if (!list->is_array()) return FieldError(lpath, "expected an array");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, PostProcessorFromJson((*list)[i], IndexPath(lpath, i)));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<PostProcessor>(new SequencePostProcessor(std::move(parts)));
  }
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const Json* single, RequireField(j, "single", path));
    const std::string spath = JoinPath(path, "single");
    const Json* special_tokens = FindField(j, "special_tokens");
    const std::string special_path = JoinPath(path, "special_tokens");
    std::vector<TemplatePostProcessor::Item> items;
    if (single->is_string()) {  // "<s> $A </s>"
      const std::string& s = single->get_ref<const std::string&>();
      size_t start = 0;
      while (start <= s.size()) {
        size_t end = s.find(' ', start);
        if (end == std::string::npos) end = s.size();
        if (end > start) {
          ASSIGN_OR_RETURN(auto item, ParseTemplatePiece(Json(s.substr(start, end - start)),
                                                         special_tokens, spath, special_path));
          items.push_back(std::move(item));
        }
        start = end + 1;
      }
    } else if (single->is_array()) {
      for (size_t i = 0; i < single->size(); ++i) {
        ASSIGN_OR_RETURN(auto item, ParseTemplatePiece((*single)[i], special_tokens,
                                                       IndexPath(spath, i), special_path));
        items.push_back(std::move(item));
      }
    } else {
      return FieldError(spath, "expected an array of template pieces");
    }
    return std::unique_ptr<PostProcessor>(new TemplatePostProcessor(std::move(items)));
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    ASSIGN_OR_RETURN(int32_t cls, ParseTokenPair(j, "cls", path));
    ASSIGN_OR_RETURN(int32_t sep, ParseTokenPair(j, "sep", path));
    std::vector<TemplatePostProcessor::Item> items = {{false, {cls}}, {true, {}}, {false, {sep}}};
    return std::unique_ptr<PostProcessor>(new TemplatePostProcessor(std::move(items)));
  }
  return FieldError(JoinPath(path, "type"), Cat("unsupported post-processor \"", type, "\""));
}

// ---------------------------------------------------------------------------------------------
// Added tokens.

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>* tokens,
                                     std::vector<std::string> patterns)
    : tokens_(tokens) {
  terminal_.push_back(-1);  // root
  for (size_t i = 0; i < patterns.size(); ++i) {
    const std::string& p = patterns[i];
    if (p.empty()) continue;
    ++num_patterns_;
    first_bytes_.set(static_cast<unsigned char>(p[0]));
    int32_t node = 0;
    for (char c : p) {
      const uint64_t key = static_cast<uint64_t>(node) << 8 | static_cast<unsigned char>(c);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        const int32_t child = static_cast<int32_t>(terminal_.size());
        terminal_.push_back(-1);
        edges_.emplace(key, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    if (terminal_[node] < 0) terminal_[node] = static_cast<int>(i);  // first pattern wins
  }
}

bool AddedTokenMatcher::FindNext(std::string_view s, size_t from, size_t* begin, size_t* end,
                                 int* token) const {
  for (size_t start = from; start < s.size(); ++start) {
    if (!first_bytes_.test(static_cast<unsigned char>(s[start]))) continue;
    int32_t node = 0;
    int best = -1;
    size_t best_end = 0;
    for (size_t pos = start; pos < s.size(); ++pos) {
      auto it = edges_.find(static_cast<uint64_t>(node) << 8 | static_cast<unsigned char>(s[pos]));
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node] >= 0) {
        best = terminal_[node];
        best_end = pos + 1;
      }
    }
    if (best >= 0) {
      *begin = start;
      *end = best_end;
      *token = best;
      return true;
    }
  }
  return false;
}

namespace {

// The code point ending at `end` (exclusive) of valid UTF-8 `s`, with its start.
char32_t CharBefore(std::string_view s, size_t end, size_t* start) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  *start = b;
  size_t pos = b;
  return unicode::DecodeUtf8At(s, &pos);
}

}  // namespace

void AddedTokenMatcher::Split(std::vector<Piece>* pieces) const {
  if (num_patterns_ == 0) return;
  ForEachPiece(pieces, [this](Piece&& p, std::vector<Piece>* out) {
    const std::string_view s = p.text;
    size_t start_offset = 0;
    size_t search = 0;
    size_t begin, end;
    int index;
    bool any = false;
    while (FindNext(s, search, &begin, &end, &index)) {
      search = end;
      const AddedToken& tok = (*tokens_)[index];
      size_t start = begin;
      size_t stop = end;
      if (tok.single_word) {
        size_t unused;
        const bool start_space = start == 0 || !unicode::IsWordChar(CharBefore(s, start, &unused));
        size_t pos = stop;
        const bool stop_space =
            stop == s.size() || !unicode::IsWordChar(unicode::DecodeUtf8At(s, &pos));
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        size_t new_start = start;
        while (new_start > 0) {
          size_t char_start;
          if (!unicode::IsWhitespace(CharBefore(s, new_start, &char_start))) break;
          new_start = char_start;
        }
        start = std::max(new_start, start_offset);
      }
      if (tok.rstrip) {
        while (stop < s.size()) {
          size_t next = stop;
          if (!unicode::IsWhitespace(unicode::DecodeUtf8At(s, &next))) break;
          stop = next;
        }
      }
      any = true;
      if (start_offset < start) {
        out->push_back(Piece{std::string(s.substr(start_offset, start - start_offset)), -1,
                             p.at_origin && start_offset == 0});
      }
      out->push_back(Piece{std::string(s.substr(start, stop - start)), tok.id, false});
      start_offset = stop;
    }
    if (!any) {
      out->push_back(std::move(p));
      return;
    }
    if (start_offset < s.size()) {
      out->push_back(Piece{std::string(s.substr(start_offset)), -1, false});
    }
  });
}

}  // namespace kvc::tokenizer_internal
