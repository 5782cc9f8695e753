// BpeModel: the `model` section of a Hugging Face tokenizer.json of type BPE, with the exact
// merge semantics of HF `tokenizers` (lowest merge rank first, leftmost on ties), `ignore_merges`
// (a word that is itself in the vocabulary is taken whole), `byte_fallback` (<0xAB> tokens for
// characters that are not in the vocabulary), `unk_token` with `fuse_unk`, and
// `continuing_subword_prefix` / `end_of_word_suffix`. Merges are read in both formats ("a b"
// strings and ["a", "b"] pairs).
//
// Immutable after FromJson except for an internal word cache guarded by mutexes: Tokenize may be
// called from many threads at once.
#ifndef KVC_MODEL_TOKENIZER_BPE_H_
#define KVC_MODEL_TOKENIZER_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "model/tokenizer_json.h"

namespace kvc::tokenizer_internal {

class BpeModel {
 public:
  // `model` is the tokenizer.json `model` object; `path` its field path for errors.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const Json& model,
                                                            std::string_view path);
  ~BpeModel();

  // Appends the ids of `word` (a non-empty pre-token, valid UTF-8) to `ids`.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // Largest id of the vocabulary, -1 when empty.
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  size_t vocab_size() const { return vocab_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  struct CacheShard;
  static constexpr int kCacheShards = 64;
  static constexpr size_t kCacheEntriesPerShard = 4096;
  static constexpr size_t kMaxCachedWordBytes = 128;

  BpeModel();
  // The BPE of one word, without ignore_merges or the cache (HF `merge_word` + `merge_all`).
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::optional<std::string> continuing_subword_prefix_;
  std::optional<std::string> end_of_word_suffix_;
  std::array<int32_t, 256> byte_ids_{};  // ids of <0x00>..<0xFF>, -1 when absent
  std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace kvc::tokenizer_internal

#endif  // KVC_MODEL_TOKENIZER_BPE_H_
