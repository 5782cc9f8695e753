#include "bench/eval/longbench.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "utf8proc.h"

namespace kvc::eval {
namespace {

struct DatasetInfo {
  std::string_view name;
  LongBenchMetric metric;
  int32_t max_new_tokens;
  std::string_view prompt;
};

// THUDM/LongBench v1: config/dataset2prompt.json, config/dataset2maxlen.json, eval.py.
constexpr DatasetInfo kDatasets[] = {
    {"narrativeqa", LongBenchMetric::kQaF1, 128,
     "You are given a story, which can be either a novel or a movie script, and a "
     "question. Answer the question as concisely as you can, using a single phrase if "
     "possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer "
     "the question based on the story as concisely as you can, using a single phrase "
     "if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"},
    {"qasper", LongBenchMetric::kQaF1, 128,
     "You are given a scientific article and a question. Answer the question as "
     "concisely as you can, using a single phrase or sentence if possible. If the "
     "question cannot be answered based on the information in the article, write "
     "\"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", "
     "or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n "
     "Answer the question based on the above article as concisely as you can, using a "
     "single phrase or sentence if possible. If the question cannot be answered based "
     "on the information in the article, write \"unanswerable\". If the question is a "
     "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide "
     "any explanation.\n\nQuestion: {input}\n\nAnswer:"},
    {"multifieldqa_en", LongBenchMetric::kQaF1, 64,
     "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the "
     "following question based on the above text, only give me the answer and do not "
     "output any other words.\n\nQuestion: {input}\nAnswer:"},
    {"multifieldqa_zh", LongBenchMetric::kQaF1Zh, 64,
     "阅读以下文字并用中文简短回答："
     "\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，"
     "不要输出任何其他字词。\n\n问题：{input}\n回答："},
    {"hotpotqa", LongBenchMetric::kQaF1, 32,
     "Answer the question based on the given passages. Only give me the answer and do "
     "not output any other words.\n\nThe following are given "
     "passages.\n{context}\n\nAnswer the question based on the given passages. Only "
     "give me the answer and do not output any other words.\n\nQuestion: "
     "{input}\nAnswer:"},
    {"2wikimqa", LongBenchMetric::kQaF1, 32,
     "Answer the question based on the given passages. Only give me the answer and do "
     "not output any other words.\n\nThe following are given "
     "passages.\n{context}\n\nAnswer the question based on the given passages. Only "
     "give me the answer and do not output any other words.\n\nQuestion: "
     "{input}\nAnswer:"},
    {"musique", LongBenchMetric::kQaF1, 32,
     "Answer the question based on the given passages. Only give me the answer and do "
     "not output any other words.\n\nThe following are given "
     "passages.\n{context}\n\nAnswer the question based on the given passages. Only "
     "give me the answer and do not output any other words.\n\nQuestion: "
     "{input}\nAnswer:"},
    {"dureader", LongBenchMetric::kRougeLZh, 128,
     "请基于给定的文章回答下述问题。\n\n文章："
     "{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答："},
    {"gov_report", LongBenchMetric::kRougeL, 512,
     "You are given a report by a government agency. Write a one-page summary of the "
     "report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the "
     "report.\n\nSummary:"},
    {"qmsum", LongBenchMetric::kRougeL, 512,
     "You are given a meeting transcript and a query containing a question or "
     "instruction. Answer the query in one or more "
     "sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the "
     "above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:"},
    {"multi_news", LongBenchMetric::kRougeL, 512,
     "You are given several news passages. Write a one-page summary of all news. "
     "\n\nNews:\n{context}\n\nNow, write a one-page summary of all the "
     "news.\n\nSummary:"},
    {"vcsum", LongBenchMetric::kRougeLZh, 512,
     "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录："
     "\n{context}\n\n会议总结："},
    {"trec", LongBenchMetric::kClassification, 64,
     "Please determine the type of the question below. Here are some examples of "
     "questions.\n\n{context}\n{input}"},
    {"triviaqa", LongBenchMetric::kQaF1, 32,
     "Answer the question based on the given passage. Only give me the answer and do "
     "not output any other words. The following are some "
     "examples.\n\n{context}\n\n{input}"},
    {"samsum", LongBenchMetric::kRougeL, 128,
     "Summarize the dialogue into a few short sentences. The following are some "
     "examples.\n\n{context}\n\n{input}"},
    {"lsht", LongBenchMetric::kClassification, 64,
     "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}"},
    {"passage_count", LongBenchMetric::kCount, 32,
     "There are some paragraphs below sourced from Wikipedia. Some of them may be "
     "duplicates. Please carefully read these paragraphs and determine how many "
     "unique paragraphs there are after removing duplicates. In other words, how many "
     "non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the "
     "final count of unique paragraphs after removing duplicates. The output format "
     "should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer "
     "is: "},
    {"passage_retrieval_en", LongBenchMetric::kRetrieval, 32,
     "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine "
     "which paragraph the abstract is from.\n\n{context}\n\nThe following is an "
     "abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the "
     "abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph "
     "2\", etc.\n\nThe answer is: "},
    {"passage_retrieval_zh", LongBenchMetric::kRetrievalZh, 32,
     "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。"
     "\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。"
     "答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是："},
    {"lcc", LongBenchMetric::kCodeSim, 64,
     "Please complete the code given below. \n{context}Next line of code:\n"},
    {"repobench-p", LongBenchMetric::kCodeSim, 64,
     "Please complete the code given below. \n{context}{input}Next line of code:\n"},
};

const DatasetInfo* FindDataset(std::string_view name) {
  for (const DatasetInfo& d : kDatasets) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

// ---- UTF-8 <-> code points (Python str semantics) ----
std::u32string Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {
      cp = 0xFFFD;
      n = 1;
    }
    out.push_back(static_cast<char32_t>(cp));
    p += n;
    left -= n;
  }
  return out;
}

std::string Encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  utf8proc_uint8_t buf[4];
  for (char32_t c : s) {
    const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buf);
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
  }
  return out;
}

// str.isspace().
bool IsSpace(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 28 && c <= 32) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// re's \w for str patterns: letters, numbers, underscore.
bool IsWord(char32_t c) {
  if (c == U'_') return true;
  if (c < 128)
    return (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z') || (c >= U'0' && c <= U'9');
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

// re's \d for str patterns: Unicode decimal digits.
bool IsDigit(char32_t c) {
  if (c < 128) return c >= U'0' && c <= U'9';
  return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_ND;
}

bool IsAsciiPunct(char32_t c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
         (c >= 123 && c <= 126);
}

std::u32string Lower(std::u32string s) {
  for (char32_t& c : s)
    c = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  return s;
}

// str.split() (no argument).
std::vector<std::u32string> SplitWhitespace(std::u32string_view s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && IsSpace(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !IsSpace(s[j])) ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// str.split(sep) with a one-character separator.
std::vector<std::u32string> SplitOn(std::u32string_view s, char32_t sep) {
  std::vector<std::u32string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

std::u32string Join(const std::vector<std::u32string>& parts, std::u32string_view sep) {
  std::u32string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// re.findall(r"\d+", s).
std::vector<std::u32string> FindNumbers(std::u32string_view s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    if (!IsDigit(s[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && IsDigit(s[j])) ++j;
    out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// f1_score over token lists (multiset intersection).
double TokenF1(const std::vector<std::u32string>& pred, const std::vector<std::u32string>& truth) {
  std::map<std::u32string, int64_t> counts;
  for (const auto& t : truth) counts[t]++;
  int64_t same = 0;
  for (const auto& t : pred) {
    auto it = counts.find(t);
    if (it != counts.end() && it->second > 0) {
      it->second--;
      same++;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(pred.size());
  const double recall = static_cast<double>(same) / static_cast<double>(truth.size());
  return 2 * precision * recall / (precision + recall);
}

bool IsCjk(char32_t c) {
  return (c >= 0x2E80 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7AF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFF00 && c <= 0xFFEF) ||
         (c >= 0x20000 && c <= 0x2FA1F);
}

// Stand-in for jieba.cut: each CJK character is a token, runs of other word characters are one
// token, other non-space characters are tokens of their own; whitespace separates.
std::vector<std::u32string> ZhSegment(std::u32string_view s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    const char32_t c = s[i];
    if (IsSpace(c)) {
      ++i;
    } else if (IsCjk(c) || !IsWord(c)) {
      out.emplace_back(1, c);
      ++i;
    } else {
      size_t j = i;
      while (j < s.size() && IsWord(s[j]) && !IsCjk(s[j])) ++j;
      out.emplace_back(s.substr(i, j - i));
      i = j;
    }
  }
  return out;
}

const std::set<char32_t>& ZhPunctuation() {
  static const std::set<char32_t> set = [] {
    std::set<char32_t> s;
    for (char32_t c : Decode("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠"
                             "｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")) {
      s.insert(c);
    }
    for (char32_t c = 0; c < 128; ++c) {
      if (IsAsciiPunct(c)) s.insert(c);
    }
    return s;
  }();
  return set;
}

// normalize_zh_answer: lower case, punctuation (ASCII + CJK) and whitespace removed.
std::u32string NormalizeZh(std::u32string_view s) {
  std::u32string out;
  for (char32_t c : Lower(std::u32string(s))) {
    if (ZhPunctuation().count(c) || IsSpace(c)) continue;
    out.push_back(c);
  }
  return out;
}

// ---- ROUGE-L (pltrdy rouge 1.0.1, exclusive=True) ----
std::vector<std::u32string> RougeSentences(std::u32string_view text) {
  std::vector<std::u32string> out;
  for (const auto& piece : SplitOn(text, U'.')) {
    if (piece.empty()) continue;
    out.push_back(Join(SplitWhitespace(piece), U" "));
  }
  return out;
}

std::vector<std::u32string> RougeWords(const std::vector<std::u32string>& sentences) {
  std::vector<std::u32string> out;
  for (const auto& s : sentences) {
    for (auto& w : SplitOn(s, U' ')) out.push_back(std::move(w));
  }
  return out;
}

// _recon_lcs(x, y): the words of the reconstructed LCS, with its tie-breaking.
void ReconLcsInto(const std::vector<std::u32string>& x, const std::vector<std::u32string>& y,
                  std::set<std::u32string>* out) {
  const size_t n = x.size(), m = y.size();
  std::vector<int32_t> t((n + 1) * (m + 1), 0);
  auto at = [&](size_t i, size_t j) -> int32_t& { return t[i * (m + 1) + j]; };
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      at(i, j) = x[i - 1] == y[j - 1] ? at(i - 1, j - 1) + 1 : std::max(at(i - 1, j), at(i, j - 1));
    }
  }
  size_t i = n, j = m;
  while (i > 0 && j > 0) {
    if (x[i - 1] == y[j - 1]) {
      out->insert(x[i - 1]);
      --i;
      --j;
    } else if (at(i - 1, j) > at(i, j - 1)) {
      --i;
    } else {
      --j;
    }
  }
}

// ---- difflib.SequenceMatcher(None, a, b) ----
class SequenceMatcher {
 public:
  SequenceMatcher(std::u32string a, std::u32string b) : a_(std::move(a)), b_(std::move(b)) {
    for (size_t i = 0; i < b_.size(); ++i) b2j_[b_[i]].push_back(static_cast<int64_t>(i));
    const size_t n = b_.size();
    if (n >= 200) {  // autojunk: drop elements more frequent than 1% + 1
      const size_t ntest = n / 100 + 1;
      for (auto it = b2j_.begin(); it != b2j_.end();) {
        it = it->second.size() > ntest ? b2j_.erase(it) : std::next(it);
      }
    }
  }

  int64_t MatchingCharacters() {
    int64_t total = 0;
    std::vector<std::array<int64_t, 4>> queue = {
        {0, static_cast<int64_t>(a_.size()), 0, static_cast<int64_t>(b_.size())}};
    while (!queue.empty()) {
      const auto [alo, ahi, blo, bhi] = queue.back();
      queue.pop_back();
      const auto [i, j, k] = FindLongestMatch(alo, ahi, blo, bhi);
      if (k == 0) continue;
      total += k;
      if (alo < i && blo < j) queue.push_back({alo, i, blo, j});
      if (i + k < ahi && j + k < bhi) queue.push_back({i + k, ahi, j + k, bhi});
    }
    return total;
  }

  double Ratio() {
    const size_t len = a_.size() + b_.size();
    if (len == 0) return 1.0;
    return 2.0 * static_cast<double>(MatchingCharacters()) / static_cast<double>(len);
  }

 private:
  std::array<int64_t, 3> FindLongestMatch(int64_t alo, int64_t ahi, int64_t blo, int64_t bhi) {
    int64_t besti = alo, bestj = blo, bestsize = 0;
    std::unordered_map<int64_t, int64_t> j2len, next;
    static const std::vector<int64_t> kNothing;
    for (int64_t i = alo; i < ahi; ++i) {
      next.clear();
      auto it = b2j_.find(a_[i]);
      const std::vector<int64_t>& js = it == b2j_.end() ? kNothing : it->second;
      for (int64_t j : js) {
        if (j < blo) continue;
        if (j >= bhi) break;
        auto prev = j2len.find(j - 1);
        const int64_t k = (prev == j2len.end() ? 0 : prev->second) + 1;
        next[j] = k;
        if (k > bestsize) {
          besti = i - k + 1;
          bestj = j - k + 1;
          bestsize = k;
        }
      }
      std::swap(j2len, next);
    }
    // No junk function: extend with equal elements (popular ones included) on both sides.
    while (besti > alo && bestj > blo && a_[besti - 1] == b_[bestj - 1]) {
      --besti;
      --bestj;
      ++bestsize;
    }
    while (besti + bestsize < ahi && bestj + bestsize < bhi &&
           a_[besti + bestsize] == b_[bestj + bestsize]) {
      ++bestsize;
    }
    return {besti, bestj, bestsize};
  }

  std::u32string a_, b_;
  std::unordered_map<char32_t, std::vector<int64_t>> b2j_;
};

std::u32string FirstLine(std::u32string_view s) {
  size_t i = 0;
  while (i < s.size() && s[i] == U'\n') ++i;
  s.remove_prefix(i);
  return std::u32string(s.substr(0, s.find(U'\n')));
}

bool Contains(std::u32string_view hay, std::u32string_view needle) {
  return hay.find(needle) != std::u32string_view::npos;
}

double NumberMatchScore(std::u32string_view prediction, std::u32string_view truth) {
  const auto numbers = FindNumbers(prediction);
  if (numbers.empty()) return 0.0;
  int64_t right = 0;
  for (const auto& n : numbers) right += n == truth;
  return static_cast<double>(right) / static_cast<double>(numbers.size());
}

// The id of re.findall(pattern, truth)[0] for pattern = prefix + r"(\d+)"; empty if none.
std::u32string FirstIdAfter(std::u32string_view truth, std::u32string_view prefix) {
  for (size_t p = truth.find(prefix); p != std::u32string_view::npos;
       p = truth.find(prefix, p + 1)) {
    size_t j = p + prefix.size();
    size_t k = j;
    while (k < truth.size() && IsDigit(truth[k])) ++k;
    if (k > j) return std::u32string(truth.substr(j, k - j));
  }
  return U"";
}

}  // namespace

absl::StatusOr<std::vector<LongBenchSample>> LoadLongBench(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<LongBenchSample> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, " line ", line_no);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
    }
    LongBenchSample s;
    auto str = [&](const char* field, std::string* dst, bool required) -> absl::Status {
      auto it = j.find(field);
      if (it == j.end() || it->is_null()) {
        if (required)
          return absl::InvalidArgumentError(absl::StrCat(where, ": missing '", field, "'"));
        return absl::OkStatus();
      }
      if (!it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": '", field, "' is not a string"));
      }
      *dst = it->get<std::string>();
      return absl::OkStatus();
    };
    auto list = [&](const char* field, std::vector<std::string>* dst,
                    bool required) -> absl::Status {
      auto it = j.find(field);
      if (it == j.end() || it->is_null()) {
        if (required)
          return absl::InvalidArgumentError(absl::StrCat(where, ": missing '", field, "'"));
        return absl::OkStatus();
      }
      if (!it->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": '", field, "' is not a list"));
      }
      for (const auto& e : *it) {
        if (!e.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": '", field, "' has a non-string element"));
        }
        dst->push_back(e.get<std::string>());
      }
      return absl::OkStatus();
    };
    absl::Status st = str("input", &s.input, false);
    if (st.ok()) st = str("context", &s.context, true);
    if (st.ok()) st = list("answers", &s.answers, true);
    if (st.ok()) st = list("all_classes", &s.all_classes, false);
    if (st.ok()) st = str("dataset", &s.dataset, true);
    if (st.ok()) st = str("_id", &s.id, false);
    if (!st.ok()) return st;
    if (auto it = j.find("length"); it != j.end() && it->is_number()) s.length = it->get<int64_t>();
    out.push_back(std::move(s));
  }
  return out;
}

std::string_view MetricName(LongBenchMetric metric) {
  switch (metric) {
    case LongBenchMetric::kQaF1:
      return "qa_f1";
    case LongBenchMetric::kQaF1Zh:
      return "qa_f1_zh";
    case LongBenchMetric::kRougeL:
      return "rouge";
    case LongBenchMetric::kRougeLZh:
      return "rouge_zh";
    case LongBenchMetric::kClassification:
      return "classification";
    case LongBenchMetric::kRetrieval:
      return "retrieval";
    case LongBenchMetric::kRetrievalZh:
      return "retrieval_zh";
    case LongBenchMetric::kCount:
      return "count";
    case LongBenchMetric::kCodeSim:
      return "code_sim";
  }
  return "unknown";
}

std::optional<LongBenchMetric> MetricForDataset(std::string_view dataset) {
  if (const DatasetInfo* d = FindDataset(dataset)) return d->metric;
  return std::nullopt;
}

std::optional<std::string> DatasetPromptTemplate(std::string_view dataset) {
  if (const DatasetInfo* d = FindDataset(dataset)) return std::string(d->prompt);
  return std::nullopt;
}

std::optional<int32_t> DatasetMaxNewTokens(std::string_view dataset) {
  if (const DatasetInfo* d = FindDataset(dataset)) return d->max_new_tokens;
  return std::nullopt;
}

bool DatasetSkipsChatTemplate(std::string_view dataset) {
  return dataset == "trec" || dataset == "triviaqa" || dataset == "samsum" || dataset == "lsht" ||
         dataset == "lcc" || dataset == "repobench-p";
}

std::string FormatPrompt(std::string_view tmpl, const LongBenchSample& sample) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    if (tmpl.compare(i, 9, "{context}") == 0) {
      out += sample.context;
      i += 9;
    } else if (tmpl.compare(i, 7, "{input}") == 0) {
      out += sample.input;
      i += 7;
    } else {
      out.push_back(tmpl[i++]);
    }
  }
  return out;
}

std::string NormalizeAnswer(std::string_view s) {
  std::u32string t = Lower(Decode(s));
  std::u32string no_punc;
  for (char32_t c : t) {
    if (!IsAsciiPunct(c)) no_punc.push_back(c);
  }
  // \b(a|an|the)\b -> " ": a maximal run of word characters equal to an article.
  std::u32string no_art;
  size_t i = 0;
  while (i < no_punc.size()) {
    if (!IsWord(no_punc[i])) {
      no_art.push_back(no_punc[i++]);
      continue;
    }
    size_t j = i;
    while (j < no_punc.size() && IsWord(no_punc[j])) ++j;
    std::u32string_view run(no_punc.data() + i, j - i);
    if (run == U"a" || run == U"an" || run == U"the") {
      no_art.push_back(U' ');
    } else {
      no_art.append(run);
    }
    i = j;
  }
  return Encode(Join(SplitWhitespace(no_art), U" "));
}

double QaF1Score(std::string_view prediction, std::string_view ground_truth) {
  return TokenF1(SplitWhitespace(Decode(NormalizeAnswer(prediction))),
                 SplitWhitespace(Decode(NormalizeAnswer(ground_truth))));
}

double QaF1ZhScore(std::string_view prediction, std::string_view ground_truth) {
  auto tokens = [](std::string_view s) {
    std::vector<std::u32string> out;
    for (const auto& t : ZhSegment(Decode(s))) {
      std::u32string n = NormalizeZh(t);
      if (!n.empty()) out.push_back(std::move(n));
    }
    return out;
  };
  return TokenF1(tokens(prediction), tokens(ground_truth));
}

double RougeLScore(std::string_view prediction, std::string_view ground_truth) {
  const auto hyp = RougeSentences(Decode(prediction));
  const auto ref = RougeSentences(Decode(ground_truth));
  if (hyp.empty() || ref.empty()) return 0.0;  // the package raises; LongBench returns 0
  const auto hyp_words = RougeWords(hyp);
  const auto ref_words = RougeWords(ref);
  const double m =
      static_cast<double>(std::set<std::u32string>(ref_words.begin(), ref_words.end()).size());
  const double n =
      static_cast<double>(std::set<std::u32string>(hyp_words.begin(), hyp_words.end()).size());
  std::set<std::u32string> uni;
  for (const auto& r : ref) {
    const auto rw = SplitOn(r, U' ');
    for (const auto& h : hyp) ReconLcsInto(rw, SplitOn(h, U' '), &uni);
  }
  const double llcs = static_cast<double>(uni.size());
  const double r_lcs = llcs / m, p_lcs = llcs / n;
  return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8));
}

double RougeLZhScore(std::string_view prediction, std::string_view ground_truth) {
  auto seg = [](std::string_view s) { return Encode(Join(ZhSegment(Decode(s)), U" ")); };
  return RougeLScore(seg(prediction), seg(ground_truth));
}

double ClassificationScore(std::string_view prediction, std::string_view ground_truth,
                           const std::vector<std::string>& all_classes) {
  std::vector<std::string> matches;
  for (const std::string& c : all_classes) {
    if (prediction.find(c) != std::string_view::npos) matches.push_back(c);
  }
  // `for match_term in em_match_list: ... em_match_list.remove(match_term)`: Python's list
  // iterator walks by index, so removing shifts the next element under it and skips it.
  for (size_t idx = 0; idx < matches.size(); ++idx) {
    const std::string term = matches[idx];
    if (ground_truth.find(term) != std::string_view::npos && term != ground_truth) {
      matches.erase(std::find(matches.begin(), matches.end(), term));
    }
  }
  // `if em_match_list != 0` is always true in LongBench, so there is no fallback branch.
  if (std::find(matches.begin(), matches.end(), ground_truth) != matches.end()) {
    return 1.0 / static_cast<double>(matches.size());
  }
  return 0.0;
}

double RetrievalScore(std::string_view prediction, std::string_view ground_truth) {
  const std::u32string id = FirstIdAfter(Decode(ground_truth), U"Paragraph ");
  if (id.empty()) return 0.0;
  return NumberMatchScore(Decode(prediction), id);
}

double RetrievalZhScore(std::string_view prediction, std::string_view ground_truth) {
  const std::u32string id = FirstIdAfter(Decode(ground_truth), U"段落");
  if (id.empty()) return 0.0;
  return NumberMatchScore(Decode(prediction), id);
}

double CountScore(std::string_view prediction, std::string_view ground_truth) {
  return NumberMatchScore(Decode(prediction), Decode(ground_truth));
}

double SequenceMatcherRatio(std::string_view a, std::string_view b) {
  return SequenceMatcher(Decode(a), Decode(b)).Ratio();
}

int32_t FuzzRatio(std::string_view a, std::string_view b) {
  if (a == b) return 100;
  if (a.empty() || b.empty()) return 0;
  return static_cast<int32_t>(std::nearbyint(100.0 * SequenceMatcherRatio(a, b)));
}

double CodeSimScore(std::string_view prediction, std::string_view ground_truth) {
  std::u32string p = Decode(prediction);
  size_t i = 0;
  while (i < p.size() && p[i] == U'\n') ++i;
  std::u32string chosen;
  for (const auto& line : SplitOn(std::u32string_view(p).substr(i), U'\n')) {
    if (!Contains(line, U"`") && !Contains(line, U"#") && !Contains(line, U"//")) {
      chosen = line;
      break;
    }
  }
  return FuzzRatio(Encode(chosen), ground_truth) / 100.0;
}

double MetricScore(LongBenchMetric metric, std::string_view prediction,
                   std::string_view ground_truth, const std::vector<std::string>& all_classes) {
  switch (metric) {
    case LongBenchMetric::kQaF1:
      return QaF1Score(prediction, ground_truth);
    case LongBenchMetric::kQaF1Zh:
      return QaF1ZhScore(prediction, ground_truth);
    case LongBenchMetric::kRougeL:
      return RougeLScore(prediction, ground_truth);
    case LongBenchMetric::kRougeLZh:
      return RougeLZhScore(prediction, ground_truth);
    case LongBenchMetric::kClassification:
      return ClassificationScore(prediction, ground_truth, all_classes);
    case LongBenchMetric::kRetrieval:
      return RetrievalScore(prediction, ground_truth);
    case LongBenchMetric::kRetrievalZh:
      return RetrievalZhScore(prediction, ground_truth);
    case LongBenchMetric::kCount:
      return CountScore(prediction, ground_truth);
    case LongBenchMetric::kCodeSim:
      return CodeSimScore(prediction, ground_truth);
  }
  return 0.0;
}

double ScoreLongBenchSample(std::string_view dataset, std::string_view prediction,
                            const std::vector<std::string>& answers,
                            const std::vector<std::string>& all_classes) {
  std::string pred(prediction);
  if (dataset == "trec" || dataset == "triviaqa" || dataset == "samsum" || dataset == "lsht") {
    pred = Encode(FirstLine(Decode(prediction)));
  }
  const LongBenchMetric metric = MetricForDataset(dataset).value_or(LongBenchMetric::kQaF1);
  double score = 0.0;
  for (const std::string& a : answers)
    score = std::max(score, MetricScore(metric, pred, a, all_classes));
  return score;
}

}  // namespace kvc::eval
