#include "bench/eval/tasks.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvc::eval {
namespace {

constexpr TaskKind kTasks[] = {TaskKind::kPasskey, TaskKind::kNiahSingle, TaskKind::kNiahMultikey,
                               TaskKind::kKv, TaskKind::kVartrack};

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int64_t Clip(int64_t v, int64_t lo, int64_t hi) { return std::min(hi, std::max(lo, v)); }

// Byte-level BPE token strings: U+0120 'Ġ' (space), U+010A 'Ċ' (newline), U+0109 'ĉ' (tab).
constexpr std::string_view kSpace = "\xC4\xA0";
constexpr std::string_view kNewline = "\xC4\x8A";
constexpr std::string_view kTab = "\xC4\x89";

bool IsBlankToken(std::string_view t) {
  if (t.empty() || t.size() % 2 != 0) return false;
  for (size_t i = 0; i < t.size(); i += 2) {
    std::string_view c = t.substr(i, 2);
    if (c != kSpace && c != kNewline && c != kTab) return false;
  }
  return true;
}

std::string Number(EvalRng& rng, int digits) {
  int64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  return std::to_string(rng.Range(lo, lo * 10));
}

std::string Hex(EvalRng& rng, int n = 8) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(kHex[rng.Uniform(16)]);
  return s;
}

std::string VarName(EvalRng& rng) {
  std::string s;
  for (int i = 0; i < 5; ++i) s.push_back(static_cast<char>('A' + rng.Uniform(26)));
  return s;
}

// Fisher-Yates with EvalRng.
template <typename T>
void Shuffle(std::vector<T>& v, EvalRng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.Uniform(i)]);
}

absl::StatusOr<std::string> ReadGzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, n);
  const bool failed = n < 0;
  gzclose(f);
  if (failed) return absl::InvalidArgumentError(absl::StrCat(path, ": gzip read error"));
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string_view TaskName(TaskKind task) {
  switch (task) {
    case TaskKind::kPasskey:
      return "passkey";
    case TaskKind::kNiahSingle:
      return "niah_single";
    case TaskKind::kNiahMultikey:
      return "niah_multikey";
    case TaskKind::kKv:
      return "kv";
    case TaskKind::kVartrack:
      return "vartrack";
  }
  return "unknown";
}

absl::StatusOr<TaskKind> ParseTask(std::string_view name) {
  for (TaskKind t : kTasks) {
    if (TaskName(t) == name) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task '", std::string(name),
                   "' (valid: passkey, niah_single, niah_multikey, kv, vartrack)"));
}

const std::vector<TaskKind>& AllTasks() {
  static const std::vector<TaskKind> all(std::begin(kTasks), std::end(kTasks));
  return all;
}

bool HasControlledDepth(TaskKind task) { return task != TaskKind::kVartrack; }

uint64_t EvalRng::Next() {
  state_ += 0x9e3779b97f4a7c15ULL;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t EvalRng::Uniform(uint64_t n) {
  KVC_CHECK(n >= 1);
  // Largest multiple of n that fits: reject draws above it.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = Next();
  } while (x >= limit);
  return x % n;
}

int64_t EvalRng::Range(int64_t lo, int64_t hi) {
  KVC_CHECK(lo < hi) << lo << " " << hi;
  return lo + static_cast<int64_t>(Uniform(static_cast<uint64_t>(hi - lo)));
}

double EvalRng::UniformDouble() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

uint64_t SeedFor(uint64_t seed_base, TaskKind task, int32_t context_length, int32_t index) {
  uint64_t h = Mix(seed_base);
  h = Mix(h ^ static_cast<uint64_t>(task));
  h = Mix(h ^ static_cast<uint64_t>(context_length));
  return Mix(h ^ static_cast<uint64_t>(index));
}

double SourceWeight(std::string_view name) {
  static const std::pair<std::string_view, double> kWeights[] = {
      {"sotu", 0.22},     {"moby_dick", 0.08}, {"austen", 0.20},     {"kjv", 0.12},
      {"fortunes", 0.10}, {"jargon", 0.08},    {"python_docs", 0.20}};
  for (const auto& [n, w] : kWeights) {
    if (n == name) return w;
  }
  return 0.05;
}

absl::StatusOr<std::vector<HaystackSource>> LoadHaystack(const std::string& path) {
  std::vector<HaystackSource> out;
  if (std::string_view(path).ends_with(".gz")) {
    ASSIGN_OR_RETURN(std::string data, ReadGzip(path));
    std::istringstream in(data);
    std::string line;
    int line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.empty()) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("source") || !j.contains("text") ||
          !j["source"].is_string() || !j["text"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, " line ", line_no, ": expected a JSON object with string 'source' and 'text'"));
      }
      out.push_back({j["source"].get<std::string>(), j["text"].get<std::string>()});
    }
  } else {
    ASSIGN_OR_RETURN(std::string data, ReadFile(path));
    constexpr std::string_view kTag = "@@source ";
    size_t pos = 0;
    int line_no = 0;
    HaystackSource* cur = nullptr;
    while (pos < data.size()) {
      size_t end = data.find('\n', pos);
      if (end == std::string::npos) end = data.size();
      std::string_view line(data.data() + pos, end - pos);
      ++line_no;
      if (std::string_view(line).starts_with(kTag)) {
        std::string name(line.substr(kTag.size()));
        if (name.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, " line ", line_no, ": '@@source' without a name"));
        }
        out.push_back({name, ""});
        cur = &out.back();
      } else if (cur != nullptr) {
        cur->text.append(line);
        if (end < data.size()) cur->text.push_back('\n');
      } else if (!line.empty() && line[0] != '#') {
        return absl::InvalidArgumentError(
            absl::StrCat(path, " line ", line_no, ": text before the first '@@source NAME' line"));
      }
      pos = end + 1;
    }
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no sources"));
  return out;
}

struct TaskGenerator::Spec {
  std::vector<std::string> needles;  // in insertion order (vartrack) or any order
  std::string question, answer;      // the queried pair
  size_t queried_needle = 0;         // index in needles (vartrack: first statement of the chain)
  bool ordered = false;
  std::vector<std::string> values;
};

absl::StatusOr<std::unique_ptr<TaskGenerator>> TaskGenerator::Create(
    const Tokenizer* tokenizer, std::vector<HaystackSource> sources, uint64_t seed_base) {
  if (tokenizer == nullptr) return absl::InvalidArgumentError("TaskGenerator: tokenizer is null");
  if (sources.empty()) return absl::InvalidArgumentError("TaskGenerator: no haystack sources");
  std::unique_ptr<TaskGenerator> g(new TaskGenerator());
  g->tok_ = tokenizer;
  g->seed_base_ = seed_base;
  auto bos = tokenizer->TokenToId("<|bos|>");
  if (!bos) bos = tokenizer->bos_id();
  if (!bos) return absl::InvalidArgumentError("TaskGenerator: the tokenizer has no <|bos|>");
  g->bos_ = *bos;
  const int32_t v = tokenizer->vocab_size();
  g->space_start_.assign(v, 0);
  g->sent_end_.assign(v, 0);
  g->blank_.assign(v, 0);
  for (int32_t id = 0; id < v; ++id) {
    const std::string t = tokenizer->IdToToken(id);
    if (t.empty()) continue;
    g->space_start_[id] =
        std::string_view(t).starts_with(kSpace) || std::string_view(t).starts_with(kNewline);
    const char last = t.back();
    g->sent_end_[id] = last == '.' || last == '!' || last == '?' || last == '"' ||
                       std::string_view(t).ends_with(kNewline);
    g->blank_[id] = IsBlankToken(t);
    if (std::string_view(t).starts_with(kSpace)) {
      std::string_view w = std::string_view(t).substr(kSpace.size());
      if (w.size() >= 4 && w.size() <= 10 &&
          std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
        g->words_.emplace_back(w);
      }
    }
  }
  std::sort(g->words_.begin(), g->words_.end());
  if (g->words_.size() < 16) {
    return absl::InvalidArgumentError("TaskGenerator: the vocabulary has too few word tokens");
  }
  for (HaystackSource& s : sources) {
    Source src;
    src.name = s.name;
    src.weight = SourceWeight(s.name);
    // Cut between the two newlines of a paragraph break followed by text ("\n" | "\nWord"),
    // where the pieces tokenize exactly like the whole (as tasks.py Haystack).
    size_t last = 0;
    auto encode = [&](std::string_view piece) -> absl::Status {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(piece, false));
      src.ids.insert(src.ids.end(), ids.begin(), ids.end());
      return absl::OkStatus();
    };
    for (size_t p = s.text.find("\n\n"); p != std::string::npos; p = s.text.find("\n\n", p + 1)) {
      if (p + 2 < s.text.size() && !std::isspace(static_cast<unsigned char>(s.text[p + 2])) &&
          p + 1 - last >= 20000) {
        RETURN_IF_ERROR(Annotate(encode(std::string_view(s.text).substr(last, p + 1 - last)),
                                 absl::StrCat("haystack source ", s.name)));
        last = p + 1;
      }
    }
    RETURN_IF_ERROR(Annotate(encode(std::string_view(s.text).substr(last)),
                             absl::StrCat("haystack source ", s.name)));
    g->weight_sum_ += src.weight;
    g->sources_.push_back(std::move(src));
  }
  return g;
}

std::vector<std::pair<std::string, int64_t>> TaskGenerator::SourceTokens() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const Source& s : sources_) out.emplace_back(s.name, static_cast<int64_t>(s.ids.size()));
  return out;
}

TaskGenerator::Spec TaskGenerator::MakeSpec(TaskKind task, int32_t seq_len, EvalRng& rng) const {
  Spec s;
  switch (task) {
    case TaskKind::kPasskey: {
      const std::string n = Number(rng, 5);
      s.needles = {absl::StrFormat(" The pass key is %s. Remember it. %s is the pass key.", n, n)};
      s.question = "What is the pass key?";
      s.answer = n;
      s.values = {n};
      break;
    }
    case TaskKind::kNiahSingle:
    case TaskKind::kNiahMultikey: {
      const int64_t kmax = task == TaskKind::kNiahSingle ? 1 : Clip(seq_len / 160, 2, 16);
      const int64_t k = kmax == 1 ? 1 : rng.Range(2, kmax + 1);
      // k distinct words (a partial Fisher-Yates over indices).
      std::vector<size_t> idx(words_.size());
      std::iota(idx.begin(), idx.end(), 0);
      for (int64_t i = 0; i < k; ++i) {
        std::swap(idx[i], idx[i + rng.Uniform(idx.size() - i)]);
      }
      std::vector<std::string> vals;
      for (int64_t i = 0; i < k; ++i) vals.push_back(Number(rng, 7));
      for (int64_t i = 0; i < k; ++i) {
        s.needles.push_back(absl::StrFormat(" One of the special magic numbers for %s is: %s.",
                                            words_[idx[i]], vals[i]));
      }
      s.queried_needle = rng.Uniform(k);
      s.question = absl::StrFormat("What is the special magic number for %s?",
                                   words_[idx[s.queried_needle]]);
      s.answer = vals[s.queried_needle];
      s.values = vals;
      break;
    }
    case TaskKind::kKv: {
      const int64_t kmax = Clip(seq_len / 96, 2, 32);
      const int64_t k = rng.Range(2, kmax + 1);
      std::vector<std::string> keys, vals;
      for (int64_t i = 0; i < k; ++i) keys.push_back(Hex(rng));
      for (int64_t i = 0; i < k; ++i) vals.push_back(Hex(rng));
      for (int64_t i = 0; i < k; ++i) {
        s.needles.push_back(absl::StrFormat(" The value for key %s is %s.", keys[i], vals[i]));
      }
      s.queried_needle = rng.Uniform(k);
      s.question = absl::StrFormat("What is the value for key %s?", keys[s.queried_needle]);
      s.answer = vals[s.queried_needle];
      s.values = keys;
      s.values.insert(s.values.end(), vals.begin(), vals.end());
      break;
    }
    case TaskKind::kVartrack: {
      const int64_t nchains = rng.Range(1, Clip(seq_len / 512, 1, 3) + 1);
      std::vector<std::pair<std::string, std::vector<std::string>>> chains;
      std::vector<std::string> names;
      for (int64_t c = 0; c < nchains; ++c) {
        const int64_t hops = rng.Range(1, seq_len >= 512 ? 5 : 3);
        std::vector<std::string> vs;
        while (static_cast<int64_t>(vs.size()) < hops + 1) {
          std::string v = VarName(rng);
          if (std::find(names.begin(), names.end(), v) == names.end()) {
            names.push_back(v);
            vs.push_back(v);
          }
        }
        chains.emplace_back(Number(rng, 5), std::move(vs));
      }
      // Interleave the chains, keeping each chain's statements in order.
      std::vector<size_t> seq;
      for (size_t c = 0; c < chains.size(); ++c) {
        seq.insert(seq.end(), chains[c].second.size(), c);
      }
      Shuffle(seq, rng);
      const size_t queried = rng.Uniform(chains.size());
      std::vector<size_t> next(chains.size(), 0);
      for (size_t c : seq) {
        const auto& [val, vs] = chains[c];
        const size_t i = next[c]++;
        if (c == queried && i == 0) s.queried_needle = s.needles.size();
        s.needles.push_back(i == 0 ? absl::StrFormat(" VAR %s = %s.", vs[0], val)
                                   : absl::StrFormat(" VAR %s = VAR %s.", vs[i], vs[i - 1]));
      }
      s.question =
          absl::StrFormat("Which variables are assigned the value %s?", chains[queried].first);
      s.answer = absl::StrJoin(chains[queried].second, " ");
      s.ordered = true;
      for (const auto& [val, vs] : chains) s.values.push_back(val);
      s.values.insert(s.values.end(), names.begin(), names.end());
      break;
    }
  }
  return s;
}

std::vector<int32_t> TaskGenerator::Window(EvalRng& rng, int32_t n, std::string* source) const {
  double total = 0;
  for (const Source& s : sources_) {
    if (static_cast<int64_t>(s.ids.size()) >= n + 64) total += s.weight;
  }
  if (total <= 0) return {};
  for (int attempt = 0; attempt < 64; ++attempt) {
    double u = rng.UniformDouble() * total;
    const Source* src = nullptr;
    for (const Source& s : sources_) {
      if (static_cast<int64_t>(s.ids.size()) < n + 64) continue;
      src = &s;
      if (u < s.weight) break;
      u -= s.weight;
    }
    const std::vector<int32_t>& arr = src->ids;
    int64_t start = rng.Range(0, static_cast<int64_t>(arr.size()) - n - 64 + 1);
    for (int64_t i = start; i < start + 64; ++i) {
      if (space_start_[arr[i]]) {
        start = i;
        break;
      }
    }
    if (blank_[arr[start + n - 1]]) continue;
    *source = src->name;
    return std::vector<int32_t>(arr.begin() + start, arr.begin() + start + n);
  }
  return {};
}

absl::StatusOr<TaskCase> TaskGenerator::Generate(TaskKind task, int32_t context_length,
                                                 int32_t index) const {
  if (context_length < 256 || context_length > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("context length must be in [256, 1048576], got ", context_length));
  }
  if (index < 0) return absl::InvalidArgumentError(absl::StrCat("case index ", index, " < 0"));
  TaskCase c;
  c.task = task;
  c.context_length = context_length;
  c.index = index;
  c.seed = SeedFor(seed_base_, task, context_length, index);
  EvalRng rng(c.seed);
  const int32_t prompt_len = context_length - kAnswerTokens;
  for (int attempt = 0; attempt < 100; ++attempt) {
    Spec spec = MakeSpec(task, prompt_len, rng);
    const std::string tail = absl::StrFormat("\n\nQuestion: %s\nAnswer:", spec.question);
    ASSIGN_OR_RETURN(std::vector<int32_t> tail_ids, tok_->Encode(tail, false));
    std::vector<std::vector<int32_t>> needle_ids;
    int64_t needle_tokens = 0;
    for (const std::string& n : spec.needles) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok_->Encode(n, false));
      needle_tokens += static_cast<int64_t>(ids.size());
      needle_ids.push_back(std::move(ids));
    }
    const int64_t hay_len = prompt_len - 1 - static_cast<int64_t>(tail_ids.size()) - needle_tokens;
    if (hay_len < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("context length ", context_length, " leaves no room for the haystack"));
    }
    std::string source;
    std::vector<int32_t> hay = Window(rng, static_cast<int32_t>(hay_len), &source);
    if (hay.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("no haystack source has ", hay_len + 64,
                                                     " tokens (needed for context length ",
                                                     context_length, ")"));
    }
    // Needle values must not occur in the haystack, nor inside one another.
    const std::string hay_text = tok_->Decode(hay, false);
    bool clash = false;
    for (size_t i = 0; i < spec.values.size() && !clash; ++i) {
      if (absl::StrContains(hay_text, spec.values[i])) clash = true;
      for (size_t j = 0; j < spec.values.size() && !clash; ++j) {
        if (i != j && absl::StrContains(spec.values[j], spec.values[i])) clash = true;
      }
    }
    if (clash) continue;

    // Insertion candidates: after a sentence end, before a token starting with space/newline.
    const int64_t n = hay_len;
    std::vector<int64_t> cand;
    for (int64_t i = 1; i < n; ++i) {
      if (space_start_[hay[i]] && sent_end_[hay[i - 1]]) cand.push_back(i);
    }
    if (cand.size() < needle_ids.size()) {
      cand.clear();
      for (int64_t i = 1; i < n; ++i) {
        if (space_start_[hay[i]]) cand.push_back(i);
      }
    }
    if (cand.size() < needle_ids.size()) {
      cand.resize(n - 1);
      std::iota(cand.begin(), cand.end(), 1);
    }
    const size_t k = needle_ids.size();
    std::vector<int64_t> pos(k);
    if (spec.ordered) {
      // Random distinct boundaries, statements in order (tasks.py _insert with ordered=True).
      std::vector<int64_t> pool = cand;
      for (size_t i = 0; i < k; ++i) std::swap(pool[i], pool[i + rng.Uniform(pool.size() - i)]);
      std::vector<int64_t> chosen(pool.begin(), pool.begin() + k);
      std::sort(chosen.begin(), chosen.end());
      pos = chosen;
      c.target_depth = -1;
    } else {
      // The queried needle at the boundary nearest to the target depth; the others at random
      // distinct boundaries.
      c.target_depth = static_cast<double>(index % kNumDepths) / (kNumDepths - 1);
      const double target = c.target_depth * static_cast<double>(n);
      size_t best = 0;
      for (size_t i = 1; i < cand.size(); ++i) {
        if (std::fabs(static_cast<double>(cand[i]) - target) <
            std::fabs(static_cast<double>(cand[best]) - target)) {
          best = i;
        }
      }
      pos[spec.queried_needle] = cand[best];
      std::vector<int64_t> pool = cand;
      pool.erase(pool.begin() + best);
      const bool distinct = pool.size() >= k - 1;
      size_t taken = 0;
      for (size_t i = 0; i < k; ++i) {
        if (i == spec.queried_needle) continue;
        if (distinct) {
          std::swap(pool[taken], pool[taken + rng.Uniform(pool.size() - taken)]);
          pos[i] = pool[taken++];
        } else {
          pos[i] = cand[rng.Uniform(cand.size())];
        }
      }
    }
    // Insert in position order (stable in needle order for equal positions).
    std::vector<size_t> order(k);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return pos[a] < pos[b]; });
    c.prompt.clear();
    c.prompt.reserve(prompt_len);
    c.prompt.push_back(bos_);
    int64_t prev = 0;
    for (size_t i : order) {
      c.prompt.insert(c.prompt.end(), hay.begin() + prev, hay.begin() + pos[i]);
      c.prompt.insert(c.prompt.end(), needle_ids[i].begin(), needle_ids[i].end());
      prev = pos[i];
    }
    c.prompt.insert(c.prompt.end(), hay.begin() + prev, hay.end());
    c.prompt.insert(c.prompt.end(), tail_ids.begin(), tail_ids.end());
    KVC_CHECK_EQ(static_cast<int64_t>(c.prompt.size()), prompt_len);
    c.question = spec.question;
    c.answer = spec.answer;
    c.source = source;
    c.num_needles = static_cast<int32_t>(k);
    c.depth = static_cast<double>(pos[spec.queried_needle]) / static_cast<double>(n);
    c.values = spec.values;
    return c;
  }
  return absl::InternalError(absl::StrCat("could not place the needles of ",
                                          std::string(TaskName(task)), " case ", index,
                                          " in 100 draws"));
}

absl::StatusOr<std::vector<std::vector<int32_t>>> TaskGenerator::ProseWindows(
    int32_t count, int32_t length) const {
  if (count < 0 || length < 2) {
    return absl::InvalidArgumentError("prose windows: count must be >= 0 and length >= 2");
  }
  std::vector<std::vector<int32_t>> out;
  for (int32_t i = 0; i < count; ++i) {
    EvalRng rng(Mix(Mix(seed_base_ ^ 0x70726f7365ULL) ^ static_cast<uint64_t>(i)));
    std::string source;
    std::vector<int32_t> w = Window(rng, length - 1, &source);
    if (w.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no haystack source has ", length + 64, " tokens for a prose window"));
    }
    w.insert(w.begin(), bos_);
    out.push_back(std::move(w));
  }
  return out;
}

std::string ParseAnswer(std::string_view generated) {
  const size_t cut = generated.find_first_of(".\n");
  std::string_view s = generated.substr(0, cut);
  const auto is_space = [](char ch) { return std::isspace(static_cast<unsigned char>(ch)); };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return std::string(s);
}

bool ExactMatch(std::string_view generated, std::string_view expected) {
  return ParseAnswer(generated) == expected;
}

}  // namespace kvc::eval
