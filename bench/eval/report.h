// Scoring, aggregation, JSON and plots of kvc-eval's results (bench/eval, docs/quality.md).
//
// A CaseOutcome holds one retrieval case's generations under every variant (full cache and
// policy@rate); AggregateScores turns them into accuracy per (task, length, variant), with a
// per-depth breakdown; MeanOverTasks averages the tasks' accuracies (macro mean) and relates
// each variant to the full cache of the same length. The JSON is kvc-eval's results.json
// ("retrieval" part); WriteScorePlots draws score against compression rate, one line per policy
// (the full cache at rate 1), one PNG per task and length plus one for the mean.
//
// Thread-safety: plain functions.
#ifndef KVC_BENCH_EVAL_REPORT_H_
#define KVC_BENCH_EVAL_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval/runner.h"
#include "bench/eval/tasks.h"
#include "nlohmann/json.hpp"

namespace kvc::eval {

struct CaseOutcome {
  TaskKind task = TaskKind::kPasskey;
  int32_t length = 0;
  int32_t index = 0;
  double depth = 0;
  double target_depth = -1;
  int32_t num_needles = 0;
  std::string answer;
  // One entry per variant, in the variants' order.
  std::vector<std::string> outputs;  // generated text
  std::vector<double> kept;          // kvs_held / kvs_uncompressed at the end
};

// Fills outputs/kept of `outcome` from the generated ids.
void FillOutcome(const Tokenizer& tokenizer, const std::vector<GenerationResult>& results,
                 CaseOutcome* outcome);

struct ScoreRow {
  std::string task;
  int32_t length = 0;
  Variant variant;
  int64_t cases = 0;
  int64_t correct = 0;
  double accuracy = 0;
  double kept_fraction = 0;      // mean over cases
  std::vector<double> by_depth;  // accuracy per depth-grid point (controlled-depth tasks)
};

struct MeanRow {
  int32_t length = 0;
  Variant variant;
  int32_t tasks = 0;
  double accuracy = 0;          // mean of the tasks' accuracies
  double relative_to_full = 0;  // accuracy / the full cache's (NaN when that is 0)
  double kept_fraction = 0;
};

// Rows ordered by length, task (in AllTasks order), variant order. Exact match per case.
std::vector<ScoreRow> AggregateScores(const std::vector<Variant>& variants,
                                      const std::vector<CaseOutcome>& outcomes);
// Requires the full variant among the rows for relative_to_full.
std::vector<MeanRow> MeanOverTasks(const std::vector<ScoreRow>& rows);

nlohmann::json ScoreRowsJson(const std::vector<ScoreRow>& rows);
nlohmann::json MeanRowsJson(const std::vector<MeanRow>& rows);
// Per case: task, length, index, depth, target_depth, needles, answer, and per variant name
// the parsed answer ("outputs") and the kept fraction ("kept").
nlohmann::json CasesJson(const std::vector<Variant>& variants,
                         const std::vector<CaseOutcome>& outcomes);
// The inverse of CasesJson for `variants` (kvc-eval --merge). INVALID_ARGUMENT naming the case
// and field when one is missing or malformed; a missing "kept" reads as NaN.
absl::StatusOr<std::vector<CaseOutcome>> CasesFromJson(const nlohmann::json& cases,
                                                       const std::vector<Variant>& variants);

// Writes score_<task>_<length>.png and score_mean_<length>.png into `dir` (must exist); returns
// the file names. `policies` are the lines; `rates` the x values (1 = the full cache).
absl::StatusOr<std::vector<std::string>> WriteScorePlots(
    const std::string& dir, const std::vector<ScoreRow>& rows, const std::vector<MeanRow>& means,
    const std::vector<CompressionPolicyKind>& policies, const std::vector<double>& rates,
    const std::string& title_suffix);

// A generic per-variant table plot: `values[p][r]` for policy p at rate r (NaN = none).
absl::Status WriteVariantPlot(const std::string& path, const std::string& title,
                              const std::string& y_label, double y_min, double y_max,
                              const std::vector<CompressionPolicyKind>& policies,
                              const std::vector<double>& rates,
                              const std::vector<std::vector<double>>& values);

}  // namespace kvc::eval

#endif  // KVC_BENCH_EVAL_REPORT_H_
