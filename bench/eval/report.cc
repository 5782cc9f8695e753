#include "bench/eval/report.h"

#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval/plot.h"
#include "common/status_macros.h"

namespace kvc::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool SameVariant(const Variant& a, const Variant& b) {
  if (a.full() || b.full()) return a.full() && b.full();
  return a.policy == b.policy && a.rate == b.rate;
}

nlohmann::json Num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

}  // namespace

void FillOutcome(const Tokenizer& tokenizer, const std::vector<GenerationResult>& results,
                 CaseOutcome* outcome) {
  outcome->outputs.clear();
  outcome->kept.clear();
  for (const GenerationResult& r : results) {
    outcome->outputs.push_back(tokenizer.Decode(r.tokens, /*skip_special_tokens=*/true));
    outcome->kept.push_back(r.kvs_uncompressed > 0 ? static_cast<double>(r.kvs_held) /
                                                         static_cast<double>(r.kvs_uncompressed)
                                                   : 1.0);
  }
}

std::vector<ScoreRow> AggregateScores(const std::vector<Variant>& variants,
                                      const std::vector<CaseOutcome>& outcomes) {
  struct Acc {
    int64_t cases = 0, correct = 0;
    double kept = 0;
    std::vector<int64_t> depth_cases, depth_correct;
  };
  // (length, task order, variant) -> accumulators.
  std::map<std::tuple<int32_t, int32_t, size_t>, Acc> acc;
  std::map<TaskKind, int32_t> order;
  for (size_t i = 0; i < AllTasks().size(); ++i) order[AllTasks()[i]] = static_cast<int32_t>(i);
  for (const CaseOutcome& o : outcomes) {
    for (size_t v = 0; v < variants.size() && v < o.outputs.size(); ++v) {
      Acc& a = acc[{o.length, order[o.task], v}];
      const bool ok = ExactMatch(o.outputs[v], o.answer);
      a.cases++;
      a.correct += ok;
      a.kept += v < o.kept.size() ? o.kept[v] : 1.0;
      if (o.target_depth >= 0) {
        a.depth_cases.resize(kNumDepths, 0);
        a.depth_correct.resize(kNumDepths, 0);
        const int32_t bin = static_cast<int32_t>(std::lround(o.target_depth * (kNumDepths - 1)));
        a.depth_cases[bin]++;
        a.depth_correct[bin] += ok;
      }
    }
  }
  std::vector<ScoreRow> rows;
  for (const auto& [key, a] : acc) {
    const auto& [length, task_order, v] = key;
    ScoreRow r;
    r.task = std::string(TaskName(AllTasks()[task_order]));
    r.length = length;
    r.variant = variants[v];
    r.cases = a.cases;
    r.correct = a.correct;
    r.accuracy = static_cast<double>(a.correct) / static_cast<double>(a.cases);
    r.kept_fraction = a.kept / static_cast<double>(a.cases);
    for (size_t d = 0; d < a.depth_cases.size(); ++d) {
      r.by_depth.push_back(a.depth_cases[d] ? static_cast<double>(a.depth_correct[d]) /
                                                  static_cast<double>(a.depth_cases[d])
                                            : kNaN);
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<MeanRow> MeanOverTasks(const std::vector<ScoreRow>& rows) {
  std::vector<MeanRow> means;
  for (const ScoreRow& r : rows) {
    MeanRow* m = nullptr;
    for (MeanRow& x : means) {
      if (x.length == r.length && SameVariant(x.variant, r.variant)) m = &x;
    }
    if (m == nullptr) {
      means.push_back(MeanRow{});
      m = &means.back();
      m->length = r.length;
      m->variant = r.variant;
    }
    m->tasks++;
    m->accuracy += r.accuracy;
    m->kept_fraction += r.kept_fraction;
  }
  for (MeanRow& m : means) {
    m.accuracy /= m.tasks;
    m.kept_fraction /= m.tasks;
  }
  for (MeanRow& m : means) {
    m.relative_to_full = kNaN;
    for (const MeanRow& f : means) {
      if (f.length == m.length && f.variant.full() && f.accuracy > 0) {
        m.relative_to_full = m.accuracy / f.accuracy;
      }
    }
  }
  return means;
}

nlohmann::json ScoreRowsJson(const std::vector<ScoreRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const ScoreRow& r : rows) {
    nlohmann::json j;
    j["task"] = r.task;
    j["length"] = r.length;
    j["variant"] = VariantName(r.variant);
    j["policy"] = r.variant.full() ? "none" : std::string(CompressionPolicyName(r.variant.policy));
    j["rate"] = r.variant.full() ? 1.0 : r.variant.rate;
    j["cases"] = r.cases;
    j["correct"] = r.correct;
    j["accuracy"] = r.accuracy;
    j["kept_fraction"] = r.kept_fraction;
    nlohmann::json d = nlohmann::json::array();
    for (double x : r.by_depth) d.push_back(Num(x));
    j["accuracy_by_depth"] = d;
    out.push_back(j);
  }
  return out;
}

nlohmann::json MeanRowsJson(const std::vector<MeanRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const MeanRow& r : rows) {
    nlohmann::json j;
    j["length"] = r.length;
    j["variant"] = VariantName(r.variant);
    j["policy"] = r.variant.full() ? "none" : std::string(CompressionPolicyName(r.variant.policy));
    j["rate"] = r.variant.full() ? 1.0 : r.variant.rate;
    j["tasks"] = r.tasks;
    j["accuracy"] = r.accuracy;
    j["relative_to_full"] = Num(r.relative_to_full);
    j["kept_fraction"] = r.kept_fraction;
    out.push_back(j);
  }
  return out;
}

nlohmann::json CasesJson(const std::vector<Variant>& variants,
                         const std::vector<CaseOutcome>& outcomes) {
  nlohmann::json out = nlohmann::json::array();
  for (const CaseOutcome& o : outcomes) {
    nlohmann::json j;
    j["task"] = std::string(TaskName(o.task));
    j["length"] = o.length;
    j["index"] = o.index;
    j["depth"] = o.depth;
    j["target_depth"] = o.target_depth >= 0 ? nlohmann::json(o.target_depth) : nlohmann::json();
    j["needles"] = o.num_needles;
    j["answer"] = o.answer;
    nlohmann::json outs = nlohmann::json::object(), kept = nlohmann::json::object();
    for (size_t v = 0; v < variants.size() && v < o.outputs.size(); ++v) {
      outs[VariantName(variants[v])] = ParseAnswer(o.outputs[v]);
      if (v < o.kept.size()) kept[VariantName(variants[v])] = Num(o.kept[v]);
    }
    j["outputs"] = outs;
    j["kept"] = kept;
    out.push_back(j);
  }
  return out;
}

absl::StatusOr<std::vector<CaseOutcome>> CasesFromJson(const nlohmann::json& cases,
                                                       const std::vector<Variant>& variants) {
  if (!cases.is_array()) return absl::InvalidArgumentError("cases: not a list");
  std::vector<CaseOutcome> out;
  for (size_t i = 0; i < cases.size(); ++i) {
    const nlohmann::json& c = cases[i];
    auto bad = [&](const char* field) {
      return absl::InvalidArgumentError(
          absl::StrCat("cases[", i, "]: bad or missing '", field, "'"));
    };
    if (!c.is_object()) return bad("(object)");
    CaseOutcome o;
    if (!c.contains("task") || !c["task"].is_string()) return bad("task");
    auto task = ParseTask(c["task"].get<std::string>());
    if (!task.ok()) return bad("task");
    o.task = *task;
    if (!c.contains("length") || !c["length"].is_number_integer()) return bad("length");
    o.length = c["length"].get<int32_t>();
    if (!c.contains("index") || !c["index"].is_number_integer()) return bad("index");
    o.index = c["index"].get<int32_t>();
    if (!c.contains("answer") || !c["answer"].is_string()) return bad("answer");
    o.answer = c["answer"].get<std::string>();
    o.depth = c.value("depth", 0.0);
    o.target_depth = c.contains("target_depth") && c["target_depth"].is_number()
                         ? c["target_depth"].get<double>()
                         : -1.0;
    o.num_needles = c.value("needles", 0);
    if (!c.contains("outputs") || !c["outputs"].is_object()) return bad("outputs");
    for (const Variant& v : variants) {
      const std::string name = VariantName(v);
      if (!c["outputs"].contains(name) || !c["outputs"][name].is_string()) return bad("outputs");
      o.outputs.push_back(c["outputs"][name].get<std::string>());
      const bool has_kept =
          c.contains("kept") && c["kept"].contains(name) && c["kept"][name].is_number();
      o.kept.push_back(has_kept ? c["kept"][name].get<double>() : kNaN);
    }
    out.push_back(std::move(o));
  }
  return out;
}

absl::Status WriteVariantPlot(const std::string& path, const std::string& title,
                              const std::string& y_label, double y_min, double y_max,
                              const std::vector<CompressionPolicyKind>& policies,
                              const std::vector<double>& rates,
                              const std::vector<std::vector<double>>& values) {
  LinePlot p;
  p.title = title;
  p.x_label = "compression rate (uncompressed / kept KVs)";
  p.y_label = y_label;
  p.x = rates;
  p.y_min = y_min;
  p.y_max = y_max;
  for (size_t i = 0; i < policies.size(); ++i) {
    PlotSeries s;
    s.name = std::string(CompressionPolicyName(policies[i]));
    s.color = PaletteColor(static_cast<int32_t>(i));
    s.y = values[i];
    p.series.push_back(std::move(s));
  }
  ASSIGN_OR_RETURN(Canvas c, RenderLinePlot(p));
  return WritePng(path, c);
}

absl::StatusOr<std::vector<std::string>> WriteScorePlots(
    const std::string& dir, const std::vector<ScoreRow>& rows, const std::vector<MeanRow>& means,
    const std::vector<CompressionPolicyKind>& policies, const std::vector<double>& rates,
    const std::string& title_suffix) {
  std::vector<std::string> files;
  std::vector<int32_t> lengths;
  std::vector<std::string> tasks;
  for (const ScoreRow& r : rows) {
    if (std::find(lengths.begin(), lengths.end(), r.length) == lengths.end()) {
      lengths.push_back(r.length);
    }
    if (std::find(tasks.begin(), tasks.end(), r.task) == tasks.end()) tasks.push_back(r.task);
  }
  auto value = [&](auto&& rowset, auto&& match, CompressionPolicyKind pol, double rate) {
    for (const auto& r : rowset) {
      if (!match(r)) continue;
      if (rate <= 1.0 ? r.variant.full()
                      : (!r.variant.full() && r.variant.policy == pol && r.variant.rate == rate)) {
        return r.accuracy;
      }
    }
    return kNaN;
  };
  for (int32_t len : lengths) {
    for (const std::string& task : tasks) {
      std::vector<std::vector<double>> vals;
      for (CompressionPolicyKind pol : policies) {
        std::vector<double> y;
        for (double rate : rates) {
          y.push_back(value(
              rows, [&](const ScoreRow& r) { return r.length == len && r.task == task; }, pol,
              rate));
        }
        vals.push_back(std::move(y));
      }
      const std::string name = absl::StrCat("score_", task, "_", len, ".png");
      RETURN_IF_ERROR(WriteVariantPlot(absl::StrCat(dir, "/", name),
                                       absl::StrCat(task, " @ ", len, " tokens", title_suffix),
                                       "accuracy", 0, 1, policies, rates, vals));
      files.push_back(name);
    }
    std::vector<std::vector<double>> vals;
    for (CompressionPolicyKind pol : policies) {
      std::vector<double> y;
      for (double rate : rates) {
        y.push_back(value(
            means, [&](const MeanRow& r) { return r.length == len; }, pol, rate));
      }
      vals.push_back(std::move(y));
    }
    const std::string name = absl::StrCat("score_mean_", len, ".png");
    RETURN_IF_ERROR(
        WriteVariantPlot(absl::StrCat(dir, "/", name),
                         absl::StrCat("mean over tasks @ ", len, " tokens", title_suffix),
                         "accuracy", 0, 1, policies, rates, vals));
    files.push_back(name);
  }
  return files;
}

}  // namespace kvc::eval
