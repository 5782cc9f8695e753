// UTF-8 and Unicode helpers used by the tokenizer (model/tokenizer.h): validation, code point
// iteration, lossy decoding with Rust's `String::from_utf8_lossy` semantics (one U+FFFD per
// maximal invalid subpart), the GPT-2 byte-level alphabet, Unicode property tests (through
// utf8proc) and normalization forms (NFC, NFD, NFKC, NFKD; utf8proc).
//
// Stateless free functions; all are thread-safe.
#ifndef KVC_MODEL_UNICODE_UTILS_H_
#define KVC_MODEL_UNICODE_UTILS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvc::unicode {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Returns the byte offset of the first invalid UTF-8 sequence in `s`, or nullopt when `s` is
// valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
std::optional<size_t> FindInvalidUtf8(std::string_view s);
inline bool IsValidUtf8(std::string_view s) { return !FindInvalidUtf8(s).has_value(); }

// Length in bytes of the UTF-8 sequence whose lead byte is `lead` (1 for invalid leads).
inline size_t Utf8SeqLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at `s[pos]` of a VALID UTF-8 string and advances `pos` past it.
char32_t DecodeUtf8At(std::string_view s, size_t* pos);

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(char32_t cp, std::string* out);
std::string EncodeUtf8(char32_t cp);

// Lossy UTF-8 decoding of `bytes`, appended to `out`, with the semantics of Rust's
// `String::from_utf8_lossy` (maximal invalid subparts become one U+FFFD each). When `final` is
// false and `bytes` ends with an incomplete but so far valid sequence, that tail is left
// undecoded (it may be completed by later bytes). Returns the number of bytes consumed.
size_t DecodeLossy(std::string_view bytes, bool final, std::string* out);
std::string LossyUtf8(std::string_view bytes);

// GPT-2's ByteLevel alphabet: byte b -> printable code point (printable bytes map to
// themselves, the others to U+0100.. in byte order), and its inverse.
char32_t ByteToChar(uint8_t b);
// UTF-8 of ByteToChar(b).
std::string_view ByteToCharUtf8(uint8_t b);
// Returns the byte for a ByteLevel alphabet code point, or -1.
int CharToByte(char32_t cp);

// Unicode properties.
bool IsWhitespace(char32_t cp);  // White_Space (Rust char::is_whitespace).
bool IsNumeric(char32_t cp);     // General category Nd, Nl or No (Rust char::is_numeric).
bool IsAlphabetic(char32_t cp);  // Letters and Nl (approximates the Alphabetic property).
// Rust regex `\w`: Alphabetic, marks, Nd, Pc, Join_Control.
bool IsWordChar(char32_t cp);
bool IsPunctuation(char32_t cp);  // General category P*.
bool IsMark(char32_t cp);         // General category M*.

enum class NormalizationForm { kNFC, kNFD, kNFKC, kNFKD };
// Normalizes valid UTF-8 `s` (pure ASCII is returned unchanged without a copy of work).
std::string Normalize(std::string_view s, NormalizationForm form);
// Lowercases valid UTF-8 `s` code point by code point (as HF `Lowercase`).
std::string Lowercase(std::string_view s);

}  // namespace kvc::unicode

#endif  // KVC_MODEL_UNICODE_UTILS_H_
