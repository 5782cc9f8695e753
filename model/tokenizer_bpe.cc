#include "model/tokenizer_bpe.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "model/unicode_utils.h"

namespace kvc::tokenizer_internal {

struct BpeModel::CacheShard {
  std::mutex mu;
  absl::flat_hash_map<std::string, std::vector<int32_t>> words;
};

BpeModel::BpeModel() : cache_(new CacheShard[kCacheShards]) { byte_ids_.fill(-1); }
BpeModel::~BpeModel() = default;

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model,
                                                             std::string_view path) {
  auto bpe = std::unique_ptr<BpeModel>(new BpeModel());
  if (const Json* dropout = FindField(model, "dropout");
      dropout != nullptr && (!dropout->is_number() || dropout->get<double>() != 0.0)) {
    return FieldError(JoinPath(path, "dropout"),
                      "BPE dropout is not supported (encoding must be deterministic)");
  }
  ASSIGN_OR_RETURN(bpe->fuse_unk_, GetBool(model, "fuse_unk", path, false));
  ASSIGN_OR_RETURN(bpe->byte_fallback_, GetBool(model, "byte_fallback", path, false));
  ASSIGN_OR_RETURN(bpe->ignore_merges_, GetBool(model, "ignore_merges", path, false));
  ASSIGN_OR_RETURN(bpe->continuing_subword_prefix_,
                   GetOptionalString(model, "continuing_subword_prefix", path));
  ASSIGN_OR_RETURN(bpe->end_of_word_suffix_, GetOptionalString(model, "end_of_word_suffix", path));
  ASSIGN_OR_RETURN(std::optional<std::string> unk_token,
                   GetOptionalString(model, "unk_token", path));

  // vocab: {"token": id, ...}
  const std::string vocab_path = JoinPath(path, "vocab");
  ASSIGN_OR_RETURN(const Json* vocab, RequireField(model, "vocab", path));
  if (!vocab->is_object()) {
    return FieldError(vocab_path, Cat("expected an object, got ", vocab->type_name()));
  }
  bpe->vocab_.reserve(vocab->size());
  int32_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    ASSIGN_OR_RETURN(int32_t id, ToTokenId(it.value(), JoinPath(vocab_path, it.key())));
    bpe->vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  bpe->id_to_token_.resize(static_cast<size_t>(max_id) + 1);
  bpe->has_id_.assign(static_cast<size_t>(max_id) + 1, false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[id] = token;
    bpe->has_id_[id] = true;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = bpe->vocab_.find(absl::StrFormat("<0x%02X>", b));
    if (it != bpe->vocab_.end()) bpe->byte_ids_[b] = it->second;
  }
  if (unk_token.has_value()) {
    auto it = bpe->vocab_.find(*unk_token);
    if (it == bpe->vocab_.end()) {
      return FieldError(JoinPath(path, "unk_token"),
                        Cat("\"", *unk_token, "\" is not in the vocabulary"));
    }
    bpe->unk_id_ = it->second;
  }

  // merges: ["a b", ...] or [["a", "b"], ...]; the rank is the position.
  const std::string merges_path = JoinPath(path, "merges");
  const Json* merges = FindField(model, "merges");
  if (merges != nullptr && !merges->is_array()) {
    return FieldError(merges_path, Cat("expected an array, got ", merges->type_name()));
  }
  const size_t prefix_len =
      bpe->continuing_subword_prefix_.has_value() ? bpe->continuing_subword_prefix_->size() : 0;
  if (merges != nullptr) {
    bpe->merges_.reserve(merges->size());
    int32_t rank = 0;
    for (const Json& m : *merges) {
      const std::string mpath = IndexPath(merges_path, rank);
      std::string left, right;
      if (m.is_string()) {
        const std::string& line = m.get_ref<const std::string&>();
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          return FieldError(mpath, Cat("merge \"", line, "\" is not two tokens"));
        }
        left = line.substr(0, space);
        right = line.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return FieldError(mpath, "expected \"a b\" or [\"a\", \"b\"]");
      }
      auto l = bpe->vocab_.find(left);
      auto r = bpe->vocab_.find(right);
      if (l == bpe->vocab_.end() || r == bpe->vocab_.end()) {
        return FieldError(mpath, Cat("merge token \"", l == bpe->vocab_.end() ? left : right,
                                     "\" is not in the vocabulary"));
      }
      if (right.size() < prefix_len) {
        return FieldError(mpath, "merge token shorter than continuing_subword_prefix");
      }
      const std::string merged = left + right.substr(prefix_len);
      auto n = bpe->vocab_.find(merged);
      if (n == bpe->vocab_.end()) {
        return FieldError(mpath, Cat("merged token \"", merged, "\" is not in the vocabulary"));
      }
      const uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(l->second)) << 32 |
                           static_cast<uint32_t>(r->second);
      // Later duplicates overwrite earlier ones, as HF's HashMap collection does.
      bpe->merges_[key] = Merge{rank, n->second};
      ++rank;
    }
  }
  return bpe;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(ToAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t left, int32_t right) const {
  auto it = merges_.find(static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 |
                         static_cast<uint32_t>(right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(ToAbsl(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  CacheShard* shard = nullptr;
  if (cacheable) {
    shard = &cache_[absl::Hash<absl::string_view>()(ToAbsl(word)) % kCacheShards];
    std::lock_guard<std::mutex> lock(shard->mu);
    auto it = shard->words.find(ToAbsl(word));
    if (it != shard->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = ids->size();
  MergeWord(word, ids);
  if (cacheable) {
    std::vector<int32_t> word_ids(ids->begin() + start, ids->end());
    std::lock_guard<std::mutex> lock(shard->mu);
    if (shard->words.size() < kCacheEntriesPerShard) {
      shard->words.emplace(std::string(word), std::move(word_ids));
    }
  }
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes; 0 once merged into its left neighbour
};

struct QueuedMerge {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
};

// Max-heap comparator that puts the lowest rank, then the lowest position, on top.
struct QueuedMergeLess {
  bool operator()(const QueuedMerge& a, const QueuedMerge& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  }
};

void AddSymbol(int32_t id, uint32_t len, std::vector<Symbol>* symbols) {
  const int32_t n = static_cast<int32_t>(symbols->size());
  if (n > 0) symbols->back().next = n;
  symbols->push_back(Symbol{id, n - 1, -1, len});
}

}  // namespace

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<QueuedMerge> heap;
  thread_local std::string scratch;
  symbols.clear();
  heap.clear();

  // Initial symbols: one per character (HF `merge_word`).
  bool has_unk = false;  // a pending unknown: (unk_id, unk_len bytes)
  uint32_t unk_len = 0;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t len =
        std::min(unicode::Utf8SeqLen(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const bool is_first = pos == 0;
    const bool is_last = pos + len >= word.size();
    std::string_view piece = word.substr(pos, len);
    if ((!is_first && continuing_subword_prefix_.has_value()) ||
        (is_last && end_of_word_suffix_.has_value())) {
      scratch.clear();
      if (!is_first && continuing_subword_prefix_.has_value()) {
        scratch += *continuing_subword_prefix_;
      }
      scratch += piece;
      if (is_last && end_of_word_suffix_.has_value()) scratch += *end_of_word_suffix_;
      piece = scratch;
    }
    pos += len;
    auto it = vocab_.find(ToAbsl(piece));
    if (it != vocab_.end()) {
      if (has_unk) {
        AddSymbol(*unk_id_, unk_len, &symbols);
        has_unk = false;
      }
      AddSymbol(it->second, static_cast<uint32_t>(len), &symbols);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : piece) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF adds the byte tokens without flushing a pending unknown first.
        for (char c : piece) AddSymbol(byte_ids_[static_cast<unsigned char>(c)], 1, &symbols);
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (has_unk && fuse_unk_) {
        unk_len += static_cast<uint32_t>(len);
      } else {
        if (has_unk) AddSymbol(*unk_id_, unk_len, &symbols);
        has_unk = true;
        unk_len = static_cast<uint32_t>(len);
      }
    }
    // Without an unk token, HF drops the character.
  }
  if (has_unk) AddSymbol(*unk_id_, unk_len, &symbols);

  // Merges (HF `Word::merge_all`).
  const QueuedMergeLess less;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      heap.push_back(QueuedMerge{m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), less);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), less);
    const QueuedMerge top = heap.back();
    heap.pop_back();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    const Merge* m = FindMerge(cur.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const Merge* pm = FindMerge(symbols[cur.prev].id, cur.id)) {
        heap.push_back(QueuedMerge{pm->rank, cur.prev, pm->new_id});
        std::push_heap(heap.begin(), heap.end(), less);
      }
    }
    if (cur.next >= 0) {
      if (const Merge* nm = FindMerge(cur.id, symbols[cur.next].id)) {
        heap.push_back(QueuedMerge{nm->rank, top.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), less);
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

}  // namespace kvc::tokenizer_internal
