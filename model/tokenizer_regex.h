// Regex: a compiled PCRE2 pattern (UTF + UCP, JIT when available) for the tokenizer's
// pre-tokenizer, normalizer and decoder patterns (the exact regex strings of tokenizer.json),
// or a literal string (`{"String": ...}` patterns), with non-overlapping leftmost match
// iteration.
//
// Immutable after construction; FindAll may be called from many threads at once (match data is
// per call / per thread).
#ifndef KVC_MODEL_TOKENIZER_REGEX_H_
#define KVC_MODEL_TOKENIZER_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kvc::tokenizer_internal {

// Rewrites `\s`, `\S`, `\w`, `\W` of an Oniguruma/Rust pattern into explicit classes with the
// same meaning under PCRE2 (whose UCP `\s` and `\w` differ slightly). `\S` and `\W` inside a
// character class are left to PCRE2.
std::string TranslatePattern(std::string_view pattern);

class Regex {
 public:
  // Compiles `pattern` as a PCRE2 regex. Errors name the pattern and the offset of the problem.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  // A pattern that matches `literal` exactly (like Rust's regex::escape).
  static std::unique_ptr<Regex> Literal(std::string_view literal);

  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in `subject` (valid
  // UTF-8), left to right. Empty matches are skipped.
  void FindAll(std::string_view subject, std::vector<std::pair<size_t, size_t>>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;

  std::string pattern_;
  bool literal_ = false;
  void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace kvc::tokenizer_internal

#endif  // KVC_MODEL_TOKENIZER_REGEX_H_
