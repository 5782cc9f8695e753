// LongBench (Bai et al. 2023, THUDM/LongBench v1) support for kvc-eval: its JSONL samples, its
// per-dataset prompt templates and generation lengths (config/dataset2prompt.json,
// dataset2maxlen.json), and its scoring (metrics.py + eval.py), so the KV-Compress paper's
// benchmark can be run through kvc with a real model and the real data.
//
// Scoring follows LongBench's Python code exactly where it can, including its quirks:
//   qa_f1        SQuAD-style normalisation (lower case, ASCII punctuation removed, the words
//                a/an/the removed, whitespace collapsed), then token-multiset F1;
//   rouge        ROUGE-L F of the `rouge` package (pltrdy, 1.0.1, exclusive=True): sentences split
//                at '.', words at ' ', the summary-level union LCS counted as a SET of words;
//                an empty hypothesis or reference scores 0 (the package raises, LongBench
//                catches);
//   classification  the classes that occur in the prediction, minus those that are a strict
//                substring of the answer (removed while iterating, as Python's list.remove in a
//                for loop does), then 1/len if the answer is among them;
//   retrieval / count  the fraction of the numbers in the prediction that equal the answer's;
//   code_sim     the first line without '`', '#' or '//', then fuzzywuzzy's fuzz.ratio (no
//                python-Levenshtein: difflib.SequenceMatcher with autojunk, rounded half-even);
// and eval.py's rules: the best score over the answers, and for trec, triviaqa, samsum and lsht
// only the prediction's first line counts. Differences (documented in docs/quality.md): the
// Chinese metrics (qa_f1_zh, rouge_zh) segment text per CJK character and ASCII word instead of
// with jieba, so zh numbers are not comparable with published ones; the `rouge` package's
// Python recursion limit (very long sentences score 0 there) is not reproduced.
//
// Thread-safety: plain functions.
#ifndef KVC_BENCH_EVAL_LONGBENCH_H_
#define KVC_BENCH_EVAL_LONGBENCH_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvc::eval {

struct LongBenchSample {
  std::string input;    // the question / query (may be empty)
  std::string context;  // the long document
  std::vector<std::string> answers;
  std::vector<std::string> all_classes;  // classification datasets; else empty
  std::string dataset;
  int64_t length = 0;  // LongBench's word/char count of the context
  std::string id;      // "_id" when present
};

// Reads a LongBench JSONL file (one sample per line; fields input, context, answers,
// all_classes (may be null), dataset, length, _id). NOT_FOUND when unreadable;
// INVALID_ARGUMENT naming the file, line and field when malformed.
absl::StatusOr<std::vector<LongBenchSample>> LoadLongBench(const std::string& path);

enum class LongBenchMetric {
  kQaF1,
  kQaF1Zh,
  kRougeL,
  kRougeLZh,
  kClassification,
  kRetrieval,
  kRetrievalZh,
  kCount,
  kCodeSim,
};
// "qa_f1", "qa_f1_zh", "rouge", "rouge_zh", "classification", "retrieval", "retrieval_zh",
// "count", "code_sim".
std::string_view MetricName(LongBenchMetric metric);
// eval.py's dataset2metric; nullopt for a dataset LongBench does not have.
std::optional<LongBenchMetric> MetricForDataset(std::string_view dataset);
// dataset2prompt.json's template ({context} and {input} placeholders); nullopt if unknown.
std::optional<std::string> DatasetPromptTemplate(std::string_view dataset);
// dataset2maxlen.json's max new tokens; nullopt if unknown.
std::optional<int32_t> DatasetMaxNewTokens(std::string_view dataset);
// pred.py does not wrap these in a chat template: trec, triviaqa, samsum, lsht, lcc, repobench-p.
bool DatasetSkipsChatTemplate(std::string_view dataset);
// The template used when neither the dataset nor --template gives one.
inline constexpr std::string_view kGenericTemplate =
    "{context}\n\nAnswer the question based on the text above.\n\nQuestion: {input}\nAnswer:";
// Replaces every "{context}" and "{input}" of `tmpl`.
std::string FormatPrompt(std::string_view tmpl, const LongBenchSample& sample);

// ---- metrics (each returns a score in [0, 1]) ----
std::string NormalizeAnswer(std::string_view s);
double QaF1Score(std::string_view prediction, std::string_view ground_truth);
double QaF1ZhScore(std::string_view prediction, std::string_view ground_truth);
double RougeLScore(std::string_view prediction, std::string_view ground_truth);
double RougeLZhScore(std::string_view prediction, std::string_view ground_truth);
double ClassificationScore(std::string_view prediction, std::string_view ground_truth,
                           const std::vector<std::string>& all_classes);
double RetrievalScore(std::string_view prediction, std::string_view ground_truth);
double RetrievalZhScore(std::string_view prediction, std::string_view ground_truth);
double CountScore(std::string_view prediction, std::string_view ground_truth);
double CodeSimScore(std::string_view prediction, std::string_view ground_truth);
// difflib.SequenceMatcher(None, a, b).ratio() over code points (autojunk on).
double SequenceMatcherRatio(std::string_view a, std::string_view b);
// fuzzywuzzy fuzz.ratio: 100 if equal, 0 if either is empty, else round(100·ratio) half-even.
int32_t FuzzRatio(std::string_view a, std::string_view b);

double MetricScore(LongBenchMetric metric, std::string_view prediction,
                   std::string_view ground_truth, const std::vector<std::string>& all_classes);
// eval.py scorer for one sample: the first line only for trec/triviaqa/samsum/lsht, then the
// best score over the answers. Datasets without a metric use qa_f1.
double ScoreLongBenchSample(std::string_view dataset, std::string_view prediction,
                            const std::vector<std::string>& answers,
                            const std::vector<std::string>& all_classes);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_LONGBENCH_H_
