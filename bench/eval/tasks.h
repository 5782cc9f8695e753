// RULER-style retrieval tasks for kvc's quality evaluation (bench/eval, docs/quality.md).
//
// The task families and prompt formats are exactly kvc-ref's (models/kvc-ref/README.md,
// models/train/tasks.py `spec`/`eval_case`): a prompt is
//   <|bos|>{held-out prose with needles}\n\nQuestion: {question}\nAnswer:
// of exactly context_length - kAnswerTokens tokens, built from token ids (haystack window +
// needle ids + tail ids, needles inserted between a sentence end and a token that starts with a
// space or newline), and the expected answer is the text the model should write before its '.'.
//
//   passkey        " The pass key is 91469. Remember it. 91469 is the pass key."
//   niah_single    " One of the special magic numbers for {word} is: 1449563."
//   niah_multikey  2..clip(len/160, 2, 16) such needles; one key is asked
//   kv             2..clip(len/96, 2, 32) of " The value for key 3fa0c2d1 is 9b1e07aa."
//   vartrack       1..clip(len/512, 1, 3) chains " VAR ABCDE = 12345." " VAR FGHIJ = VAR ABCDE."
//
// What differs from the training generator, on purpose:
//   * haystacks come only from held-out text (the last 5% of each corpus source, which training
//     never read; bench/eval/data/heldout.txt is a committed ~280 KB slice of it);
//   * randomness comes from EvalRng (SplitMix64) seeded from kEvalSeedBase, a different RNG family
//     and seed space from training (numpy PCG64, seeds 1234*1000003 + batch) and from the
//     README's evaluation (numpy, seeds 7,000,000+);
//   * the queried needle's depth is controlled (RULER style): case i of passkey, niah_single,
//     niah_multikey and kv puts it at the sentence boundary nearest to depth (i mod 11) / 10 of
//     the haystack; the other needles, and all vartrack statements, go to random boundaries;
//   * needle values never occur in the haystack text, so the answer appears only where the
//     needle puts it.
// Cases are a pure function of (tokenizer, haystack text, seed base, task, length, index).
//
// Thread-safety: a TaskGenerator is immutable after Create(); Generate() may run concurrently.
#ifndef KVC_BENCH_EVAL_TASKS_H_
#define KVC_BENCH_EVAL_TASKS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace kvc::eval {

// Tokens left for the answer: prompts have context_length - kAnswerTokens tokens and greedy
// decoding adds at most kAnswerTokens (as in kvc-ref's own evaluation).
inline constexpr int32_t kAnswerTokens = 24;
// Seeds of the evaluation ("kvc-eval" in ASCII); see SeedFor().
inline constexpr uint64_t kEvalSeedBase = 0x6b76632d6576616cULL;
// Depth grid of the controlled-depth tasks: case i targets depth (i mod kNumDepths) / 10.
inline constexpr int32_t kNumDepths = 11;

enum class TaskKind { kPasskey, kNiahSingle, kNiahMultikey, kKv, kVartrack };

// "passkey", "niah_single", "niah_multikey", "kv", "vartrack".
std::string_view TaskName(TaskKind task);
// INVALID_ARGUMENT listing the valid names.
absl::StatusOr<TaskKind> ParseTask(std::string_view name);
const std::vector<TaskKind>& AllTasks();
// Whether the generator controls the queried needle's depth for this task (all but vartrack).
bool HasControlledDepth(TaskKind task);

// SplitMix64 (Steele et al.): a small, portable generator, so cases are identical on every
// platform and standard library (std:: distributions are not).
class EvalRng {
 public:
  explicit EvalRng(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n) by rejection (no modulo bias). REQUIRES n >= 1.
  uint64_t Uniform(uint64_t n);
  // Uniform in [lo, hi). REQUIRES lo < hi.
  int64_t Range(int64_t lo, int64_t hi);
  // Uniform in [0, 1) with 53 random bits.
  double UniformDouble();

 private:
  uint64_t state_;
};

// The seed of one case: SplitMix64 of (seed_base, task, context length, index).
uint64_t SeedFor(uint64_t seed_base, TaskKind task, int32_t context_length, int32_t index);

// One source of haystack text.
struct HaystackSource {
  std::string name;  // sotu, moby_dick, austen, kjv, fortunes, jargon, python_docs, ...
  std::string text;
};

// Reads haystack text: either the committed format (bench/eval/data/heldout.txt: '#' header
// lines, then '@@source NAME' lines each followed by that source's text) or the corpus bundle
// (.cache/corpus/heldout.jsonl.gz: one {"source", "text"} JSON object per line, gzip'ed).
// NOT_FOUND when unreadable; INVALID_ARGUMENT (naming the file and line) when malformed.
absl::StatusOr<std::vector<HaystackSource>> LoadHaystack(const std::string& path);

// kvc-ref's sampling weights of the sources (models/train/tasks.py SOURCE_WEIGHTS); 0.05 for
// a source it does not name.
double SourceWeight(std::string_view name);

struct TaskCase {
  TaskKind task = TaskKind::kPasskey;
  int32_t context_length = 0;
  int32_t index = 0;
  uint64_t seed = 0;
  std::vector<int32_t> prompt;  // context_length - kAnswerTokens ids, starting with <|bos|>
  std::string question;
  std::string answer;               // expected text before the model's '.'
  std::string source;               // haystack source name
  int32_t num_needles = 0;          // needle sentences (statements for vartrack)
  double target_depth = -1;         // controlled-depth tasks: (index mod 11) / 10; else -1
  double depth = 0;                 // haystack tokens before the queried needle / haystack tokens
                                    // (vartrack: before the queried chain's first statement)
  std::vector<std::string> values;  // every needle value (numbers, hex values, variable names)
};

class TaskGenerator {
 public:
  // Tokenizes the sources (in paragraph-aligned chunks, so the ids equal whole-text
  // tokenization) and derives the vocabulary tables. `tokenizer` must outlive the generator.
  // INVALID_ARGUMENT when the tokenizer lacks <|bos|> or the sources are empty.
  static absl::StatusOr<std::unique_ptr<TaskGenerator>> Create(const Tokenizer* tokenizer,
                                                               std::vector<HaystackSource> sources,
                                                               uint64_t seed_base = kEvalSeedBase);

  // Case `index` (>= 0) of `task` at `context_length` (>= 256) tokens. INVALID_ARGUMENT when
  // the length is out of range or no source is long enough for the haystack.
  absl::StatusOr<TaskCase> Generate(TaskKind task, int32_t context_length, int32_t index) const;

  // `count` windows of prose for perplexity: <|bos|> then length - 1 held-out tokens starting
  // at a word, drawn like the haystacks from their own seed. INVALID_ARGUMENT when no source
  // has length + 64 tokens.
  absl::StatusOr<std::vector<std::vector<int32_t>>> ProseWindows(int32_t count,
                                                                 int32_t length) const;

  // The needle key words: the vocabulary's single-token words " [a-z]{4,10}", sorted (the
  // list kvc-ref was trained with; results.json "needle_words").
  const std::vector<std::string>& needle_words() const { return words_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  // Tokens per source, in load order.
  std::vector<std::pair<std::string, int64_t>> SourceTokens() const;

 private:
  struct Source {
    std::string name;
    double weight = 0;
    std::vector<int32_t> ids;
  };
  struct Spec;
  TaskGenerator() = default;
  Spec MakeSpec(TaskKind task, int32_t seq_len, EvalRng& rng) const;
  // A window of n ids (tasks.py Haystack.window), or an empty vector after 64 failed draws.
  std::vector<int32_t> Window(EvalRng& rng, int32_t n, std::string* source) const;

  const Tokenizer* tok_ = nullptr;
  uint64_t seed_base_ = kEvalSeedBase;
  int32_t bos_ = 0;
  std::vector<Source> sources_;
  double weight_sum_ = 0;
  std::vector<uint8_t> space_start_, sent_end_, blank_;  // per token id
  std::vector<std::string> words_;
};

// The model's answer: generated text up to its first '.' or newline, whitespace-stripped
// (tasks.py parse_answer).
std::string ParseAnswer(std::string_view generated);
// Exact match of ParseAnswer(generated) with the expected answer.
bool ExactMatch(std::string_view generated, std::string_view expected);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_TASKS_H_
