#include "model/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/unicode_utils.h"

namespace kvc::tokenizer_internal {
namespace {

// Per-thread match data with room for the whole-match pair (captures are never read).
pcre2_match_data* ThreadMatchData() {
  struct Holder {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(data); }
  };
  thread_local Holder holder;
  return holder.data;
}

// Unicode White_Space, the `\s` of Oniguruma (HF's regex engine) and of Rust's regex crate.
// PCRE2's UCP `\s` also matches U+180E.
constexpr std::string_view kSpaceClass =
    R"(\x{9}-\x{d}\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";
// Oniguruma's Unicode `\w`: letters, marks, decimal numbers, connector punctuation. PCRE2
// 10.42's UCP `\w` is [\p{L}\p{N}_].
constexpr std::string_view kWordClass = R"(\p{L}\p{M}\p{Nd}\p{Pc})";

}  // namespace

std::string TranslatePattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 'Q') {  // \Q...\E: literal text, copied verbatim
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop;
        continue;
      }
      if (d == 's' || d == 'w' || ((d == 'S' || d == 'W') && !in_class)) {
        const std::string_view cls = (d == 's' || d == 'S') ? kSpaceClass : kWordClass;
        const bool negated = d == 'S' || d == 'W';
        if (!in_class) out += negated ? "[^" : "[";
        out.append(cls);
        if (!in_class) out += "]";
        i += 2;
        continue;
      }
      out.push_back(c);
      out.push_back(d);
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a literal ']'
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string translated = TranslatePattern(pattern);
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(
        absl::StrCat("invalid regex \"", absl::string_view(pattern.data(), pattern.size()),
                     "\" at offset ", error_offset, ": ", reinterpret_cast<const char*>(message)));
  }
  // JIT is an optimization only: without it (unsupported CPU) pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto regex = std::unique_ptr<Regex>(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  return regex;
}

std::unique_ptr<Regex> Regex::Literal(std::string_view literal) {
  auto regex = std::unique_ptr<Regex>(new Regex());
  regex->pattern_ = std::string(literal);
  regex->literal_ = true;
  return regex;
}

Regex::~Regex() {
  if (code_ != nullptr) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::FindAll(std::string_view subject,
                    std::vector<std::pair<size_t, size_t>>* matches) const {
  if (literal_) {
    if (pattern_.empty()) return;
    size_t pos = 0;
    while ((pos = subject.find(pattern_, pos)) != std::string_view::npos) {
      matches->emplace_back(pos, pos + pattern_.size());
      pos += pattern_.size();
    }
    return;
  }
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* data = ThreadMatchData();
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t start = 0;
  while (start <= subject.size()) {
    const int rc = pcre2_match(code, s, subject.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH, or a resource limit: no more matches
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end > begin) {
      matches->emplace_back(begin, end);
      start = end;
    } else {
      // Empty match: step over one character.
      if (begin >= subject.size()) break;
      start = begin + unicode::Utf8SeqLen(static_cast<unsigned char>(subject[begin]));
    }
  }
}

}  // namespace kvc::tokenizer_internal
