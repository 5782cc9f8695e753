#include "model/unicode_utils.h"

#include <array>
#include <cstdlib>

#include "utf8proc.h"

namespace kvc::unicode {
namespace {

// Result of reading one sequence at `pos`: the number of bytes that form a valid sequence
// (`valid` true), or the length of the maximal invalid subpart (`valid` false). `incomplete` is
// set when the input ends inside a sequence that was valid so far.
struct SeqCheck {
  size_t len;
  bool valid;
  bool incomplete;
};

SeqCheck CheckSeq(std::string_view s, size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return {1, true, false};
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (b0 == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else {
    return {1, false, false};
  }
  for (int j = 1; j <= need; ++j) {
    if (pos + j >= s.size()) return {static_cast<size_t>(j), false, true};
    const auto c = static_cast<unsigned char>(s[pos + j]);
    const unsigned char l = j == 1 ? lo : 0x80;
    const unsigned char h = j == 1 ? hi : 0xBF;
    if (c < l || c > h) return {static_cast<size_t>(j), false, false};
  }
  return {static_cast<size_t>(need + 1), true, false};
}

struct ByteTables {
  std::array<char32_t, 256> byte_to_char{};
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 512> char_to_byte{};  // code points < 512 only
};

ByteTables MakeByteTables() {
  ByteTables t;
  t.char_to_byte.fill(-1);
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = direct[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    t.byte_to_char[b] = cp;
    t.byte_to_utf8[b] = EncodeUtf8(cp);
    t.char_to_byte[cp] = static_cast<int16_t>(b);
  }
  return t;
}

const ByteTables& Tables() {
  static const ByteTables* tables = new ByteTables(MakeByteTables());
  return *tables;
}

}  // namespace

std::optional<size_t> FindInvalidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (pos + 8 <= s.size()) {
      uint64_t word;
      __builtin_memcpy(&word, s.data() + pos, 8);
      if (word & 0x8080808080808080ULL) break;
      pos += 8;
    }
    if (pos >= s.size()) break;
    const SeqCheck c = CheckSeq(s, pos);
    if (!c.valid) return pos;
    pos += c.len;
  }
  return std::nullopt;
}

char32_t DecodeUtf8At(std::string_view s, size_t* pos) {
  const auto b0 = static_cast<unsigned char>(s[*pos]);
  const size_t len = Utf8SeqLen(b0);
  char32_t cp;
  switch (len) {
    case 1:
      cp = b0;
      break;
    case 2:
      cp = (b0 & 0x1F) << 6 | (static_cast<unsigned char>(s[*pos + 1]) & 0x3F);
      break;
    case 3:
      cp = (b0 & 0x0F) << 12 | (static_cast<unsigned char>(s[*pos + 1]) & 0x3F) << 6 |
           (static_cast<unsigned char>(s[*pos + 2]) & 0x3F);
      break;
    default:
      cp = (b0 & 0x07) << 18 | (static_cast<unsigned char>(s[*pos + 1]) & 0x3F) << 12 |
           (static_cast<unsigned char>(s[*pos + 2]) & 0x3F) << 6 |
           (static_cast<unsigned char>(s[*pos + 3]) & 0x3F);
      break;
  }
  *pos += len;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string EncodeUtf8(char32_t cp) {
  std::string s;
  AppendUtf8(cp, &s);
  return s;
}

size_t DecodeLossy(std::string_view bytes, bool final, std::string* out) {
  size_t pos = 0;
  size_t run_start = 0;  // start of the pending run of valid bytes
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const SeqCheck c = CheckSeq(bytes, pos);
    if (c.valid) {
      pos += c.len;
      continue;
    }
    out->append(bytes.data() + run_start, pos - run_start);
    if (c.incomplete && !final) return pos;
    AppendUtf8(kReplacementChar, out);
    pos += c.len;
    run_start = pos;
  }
  out->append(bytes.data() + run_start, pos - run_start);
  return pos;
}

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  DecodeLossy(bytes, /*final=*/true, &out);
  return out;
}

char32_t ByteToChar(uint8_t b) { return Tables().byte_to_char[b]; }
std::string_view ByteToCharUtf8(uint8_t b) { return Tables().byte_to_utf8[b]; }
int CharToByte(char32_t cp) { return cp < 512 ? Tables().char_to_byte[cp] : -1; }

bool IsWhitespace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool IsNumeric(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool IsAlphabetic(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         cat == UTF8PROC_CATEGORY_NL;
}

bool IsWordChar(char32_t cp) {
  if (cp < 0x80) {
    return ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || (cp >= '0' && cp <= '9') || cp == '_';
  }
  if (cp == 0x200C || cp == 0x200D) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) ||
         cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_PC;
}

bool IsPunctuation(char32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool IsMark(char32_t cp) {
  if (cp < 0x80) return false;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME;
}

std::string Normalize(std::string_view s, NormalizationForm form) {
  bool ascii = true;
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(s);
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::kNFC:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalizationForm::kNFD:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalizationForm::kNFKC:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalizationForm::kNFKD:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    // Only reachable for invalid UTF-8, which callers have rejected; keep the text unchanged.
    free(out);
    return std::string(s);
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  free(out);
  return result;
}

std::string Lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    const auto b = static_cast<unsigned char>(s[pos]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
      ++pos;
      continue;
    }
    const char32_t cp = DecodeUtf8At(s, &pos);
    if (cp == 0x130) {  // İ: the one code point whose full lowercase mapping is two
      out += "i\xCC\x87";
      continue;
    }
    AppendUtf8(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))), &out);
  }
  return out;
}

}  // namespace kvc::unicode
