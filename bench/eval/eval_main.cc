// kvc-eval: the quality evaluation of KV-cache compression (docs/quality.md).
//
// Retrieval (default): RULER-style tasks over held-out prose (bench/eval/tasks.h) at the given
// context lengths, greedy generation on the CPU backend (or --backend cuda: the CUDA executor,
// in a build with CUDA) under the full cache and every
// policy x compression rate, exact-match scoring; writes results.json, score plots (PNG) and
// prints tables. LongBench (--longbench FILE.jsonl,...): the same sweep over LongBench samples
// with LongBench's prompts and metrics. Perplexity (--ppl-windows N): teacher-forced next-token
// loss over held-out prose with continual compression.
//
//   kvc-eval [--model models/kvc-ref] [--haystack bench/eval/data/heldout.txt]
//            [--tasks passkey,niah_single,niah_multikey,kv,vartrack] [--lengths 2048]
//            [--cases 100] [--case-offset 0]
//            [--policies kvcompress,snapkv,pyramidkv,streaming,random] [--rates 1,2,4,8,16,32,64]
//            [--protected-window 32] [--observation-window 32] [--sink-tokens 0]
//            [--min-kvs-per-head 0]
//            [--pool-kernel 7] [--no-continual] [--no-decode-scores]
//            [--block-size 16] [--driver shared|engine] [--wave 4] [--threads N]
//            [--backend cpu|cuda] [--cuda-device 0] [--slot-cache auto|off|on|verify]
//            [--slot-read-threads 1] [--fork auto|copy|reprefill]
//            [--ppl-windows 0] [--ppl-prefix 512] [--ppl-tokens 256] [--ppl-haystack PATH]
//            [--longbench F1.jsonl,F2.jsonl] [--template STR] [--chat-template STR]
//            [--max-prompt-tokens N] [--max-new-tokens N]
//            [--dump-cases] [--no-plots] [--no-retrieval] [--out DIR]
//   kvc-eval --merge A/results.json,B/results.json --out DIR   (runs made with --dump-cases)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/eval/longbench.h"
#include "bench/eval/report.h"
#include "bench/eval/runner.h"
#include "bench/eval/tasks.h"
#include "common/process.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace kvc::eval {
namespace {

struct Options {
  std::string model = "models/kvc-ref";
  std::string haystack = "bench/eval/data/heldout.txt";
  std::vector<TaskKind> tasks = AllTasks();
  std::vector<int32_t> lengths = {2048};
  int32_t cases = 100;
  int32_t case_offset = 0;
  std::vector<CompressionPolicyKind> policies = {
      CompressionPolicyKind::kKvCompress, CompressionPolicyKind::kSnapKv,
      CompressionPolicyKind::kPyramidKv, CompressionPolicyKind::kStreaming,
      CompressionPolicyKind::kRandom};
  std::vector<double> rates = {1, 2, 4, 8, 16, 32, 64};
  RunSettings run;
  std::string driver = "shared";
  int32_t threads = 0;
  int32_t ppl_windows = 0;
  int32_t ppl_prefix = 512;
  int32_t ppl_tokens = 256;
  std::string ppl_haystack;  // default: --haystack
  std::vector<std::string> longbench;
  std::string tmpl;
  std::string chat_template;
  int32_t max_prompt_tokens = 0;
  int32_t max_new_tokens = 0;
  bool dump_cases = false;
  std::vector<std::string> merge;
  bool plots = true;
  bool retrieval = true;
  std::string out = "eval-out";
};

[[noreturn]] void Usage(const std::string& msg) {
  std::cerr << "kvc-eval: " << msg << "\n(see the comment at the top of bench/eval/eval_main.cc)\n";
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    auto int_arg = [&](int32_t lo) {
      int32_t v;
      if (!absl::SimpleAtoi(next(), &v) || v < lo) Usage(absl::StrCat(a, ": an integer >= ", lo));
      return v;
    };
    auto list = [&]() {
      return std::vector<std::string>(absl::StrSplit(next(), ',', absl::SkipEmpty()));
    };
    if (a == "--model") {
      o.model = next();
    } else if (a == "--haystack") {
      o.haystack = next();
    } else if (a == "--tasks") {
      o.tasks.clear();
      for (const auto& s : list()) {
        auto t = ParseTask(s);
        if (!t.ok()) Usage(absl::StrCat("--tasks: ", t.status().message()));
        o.tasks.push_back(*t);
      }
    } else if (a == "--lengths") {
      o.lengths.clear();
      for (const auto& s : list()) {
        int32_t v;
        if (!absl::SimpleAtoi(s, &v) || v < 256) Usage("--lengths: integers >= 256");
        o.lengths.push_back(v);
      }
    } else if (a == "--cases") {
      o.cases = int_arg(1);
    } else if (a == "--case-offset") {
      o.case_offset = int_arg(0);
    } else if (a == "--policies") {
      o.policies.clear();
      for (const auto& s : list()) {
        auto p = ParseCompressionPolicy(s);
        if (!p.ok() || *p == CompressionPolicyKind::kNone) {
          Usage("--policies: kvcompress, snapkv, pyramidkv, streaming, random");
        }
        o.policies.push_back(*p);
      }
    } else if (a == "--rates") {
      o.rates.clear();
      for (const auto& s : list()) {
        double r;
        if (!absl::SimpleAtod(s, &r) || !(r >= 1) || !std::isfinite(r)) {
          Usage("--rates: numbers >= 1");
        }
        o.rates.push_back(r);
      }
      std::sort(o.rates.begin(), o.rates.end());
      o.rates.erase(std::unique(o.rates.begin(), o.rates.end()), o.rates.end());
      if (o.rates.front() != 1) o.rates.insert(o.rates.begin(), 1);  // the full-cache baseline
    } else if (a == "--protected-window") {
      o.run.protected_window = int_arg(0);
    } else if (a == "--observation-window") {
      o.run.observation_window = int_arg(1);
    } else if (a == "--min-kvs-per-head") {
      o.run.min_kvs_per_head = int_arg(0);
    } else if (a == "--sink-tokens") {
      o.run.sink_tokens = int_arg(0);
    } else if (a == "--pool-kernel") {
      o.run.score_pool_kernel = int_arg(0);
      if (o.run.score_pool_kernel > 1 && o.run.score_pool_kernel % 2 == 0) {
        Usage("--pool-kernel: 0, 1 or an odd number");
      }
    } else if (a == "--no-continual") {
      o.run.continual = false;
    } else if (a == "--no-decode-scores") {
      o.run.decode_scores = false;
    } else if (a == "--block-size") {
      o.run.block_size = int_arg(1);
    } else if (a == "--driver") {
      o.driver = next();
      if (o.driver != "shared" && o.driver != "engine") Usage("--driver: shared or engine");
    } else if (a == "--wave") {
      o.run.wave_prompts = int_arg(1);
    } else if (a == "--engine-max-seqs") {
      o.run.engine_max_seqs = int_arg(1);
    } else if (a == "--backend") {
      auto b = ParseBackend(next());
      if (!b.ok()) Usage(absl::StrCat("--backend: ", b.status().message()));
      if (*b == Backend::kCuda && !CudaBackendBuilt()) {
        Usage("--backend cuda: this kvc-eval was built without CUDA (-DKVC_ENABLE_CUDA=ON)");
      }
      o.run.backend = *b;
    } else if (a == "--cuda-device") {
      o.run.cuda_device = int_arg(0);
    } else if (a == "--slot-cache") {
      const std::string v = next();
      if (v == "auto") {
        o.run.slot_cache = SlotCache::kAuto;
      } else if (v == "off") {
        o.run.slot_cache = SlotCache::kOff;
      } else if (v == "on") {
        o.run.slot_cache = SlotCache::kOn;
      } else if (v == "verify") {
        o.run.slot_cache = SlotCache::kVerify;
      } else {
        Usage("--slot-cache: auto, off, on or verify");
      }
    } else if (a == "--fork") {
      const std::string v = next();
      if (v == "auto") {
        o.run.fork = ForkMode::kAuto;
      } else if (v == "copy") {
        o.run.fork = ForkMode::kCopy;
      } else if (v == "reprefill") {
        o.run.fork = ForkMode::kReprefill;
      } else {
        Usage("--fork: auto, copy or reprefill");
      }
    } else if (a == "--slot-read-threads") {
      o.run.slot_read_threads = int_arg(1);
    } else if (a == "--threads") {
      o.threads = int_arg(1);
    } else if (a == "--ppl-windows") {
      o.ppl_windows = int_arg(0);
    } else if (a == "--ppl-prefix") {
      o.ppl_prefix = int_arg(1);
    } else if (a == "--ppl-haystack") {
      o.ppl_haystack = next();
    } else if (a == "--ppl-tokens") {
      o.ppl_tokens = int_arg(1);
    } else if (a == "--longbench") {
      o.longbench = list();
    } else if (a == "--template") {
      o.tmpl = next();
    } else if (a == "--chat-template") {
      o.chat_template = next();
    } else if (a == "--max-prompt-tokens") {
      o.max_prompt_tokens = int_arg(1);
    } else if (a == "--max-new-tokens") {
      o.max_new_tokens = int_arg(1);
    } else if (a == "--no-retrieval") {
      o.retrieval = false;
    } else if (a == "--merge") {
      o.merge = list();
    } else if (a == "--dump-cases") {
      o.dump_cases = true;
    } else if (a == "--no-plots") {
      o.plots = false;
    } else if (a == "--out") {
      o.out = next();
    } else if (a == "--help" || a == "-h") {
      Usage("usage");
    } else {
      Usage("unknown option " + a);
    }
  }
  return o;
}

std::vector<Variant> MakeVariants(const Options& o) {
  std::vector<Variant> v = {Variant{}};  // the full cache
  for (CompressionPolicyKind p : o.policies) {
    for (double r : o.rates) {
      if (r > 1) v.push_back(Variant{p, r});
    }
  }
  return v;
}

// Token ids whose text contains '.' or a newline: the answer ends there (tasks.py parse_answer).
std::vector<int32_t> AnswerStopIds(const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.IsSpecial(id)) continue;
    const std::string t = tok.Decode(std::vector<int32_t>{id}, false);
    if (t.find('.') != std::string::npos || t.find('\n') != std::string::npos) ids.push_back(id);
  }
  return ids;
}

class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), start_(Clock::now()) {}
  void operator()(int64_t done, int64_t total) {
    const double s = Seconds();
    if (done != total && s - last_ < 10) return;
    last_ = s;
    std::fprintf(stderr, "  %s: %lld/%lld prompts, %.0f s, ETA %.0f s\n", what_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), s,
                 done ? s / done * (total - done) : 0.0);
  }
  double Seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_;
  Clock::time_point start_;
  double last_ = -1e9;
};

absl::StatusOr<std::vector<std::vector<GenerationResult>>> Run(
    const Options& o, std::shared_ptr<const ModelWeights> w, const std::vector<GenerationJob>& jobs,
    const std::vector<Variant>& variants, Progress* progress, RunStats* stats) {
  auto fn = [progress](int64_t d, int64_t t) { (*progress)(d, t); };
  if (o.driver == "engine") return RunWithEngine(w, jobs, variants, o.run, fn);
  return RunSharedPrefill(w, jobs, variants, o.run, fn, stats);
}

// Where the shared driver's time went (timing section of results.json).
nlohmann::json StatsJson(const RunStats& s) {
  nlohmann::json j;
  j["prefill_seconds"] = s.prefill_seconds;
  j["fork_seconds"] = s.fork_seconds;
  j["compress_seconds"] = s.compress_seconds;
  j["decode_seconds"] = s.decode_seconds;
  j["forward_calls"] = s.forward_calls;
  j["prefills"] = s.prefills;
  j["reprefill_logits_differ"] = s.reprefill_logits_differ;
  j["compressions"] = s.compressions;
  j["slot_block_reads"] = s.slot_block_reads;
  j["slot_prefetches"] = s.slot_prefetches;
  j["slot_single_block_reads"] = s.slot_single_block_reads;
  j["mirror_block_hits"] = s.mirror_block_hits;
  j["mirror_mismatches"] = s.mirror_mismatches;
  return j;
}

std::string Pct(double x) { return std::isfinite(x) ? absl::StrFormat("%5.1f", 100 * x) : "    -"; }

void PrintTable(const std::string& title, const std::vector<CompressionPolicyKind>& policies,
                const std::vector<double>& rates,
                const std::function<double(CompressionPolicyKind, double)>& value) {
  std::cout << title << "\n" << absl::StrFormat("%-12s", "policy");
  for (double r : rates) std::cout << absl::StrFormat("%7s", absl::StrFormat("%gx", r));
  std::cout << "\n";
  for (CompressionPolicyKind p : policies) {
    std::cout << absl::StrFormat("%-12s", CompressionPolicyName(p));
    for (double r : rates) std::cout << absl::StrFormat("%7s", Pct(value(p, r)));
    std::cout << "\n";
  }
  std::cout << "\n";
}

// Aggregates, prints and plots retrieval outcomes into report["retrieval"]. False on error.
bool ReportRetrieval(const Options& o, const std::vector<Variant>& variants,
                     const std::vector<CaseOutcome>& outcomes, nlohmann::json* report) {
  const auto rows = AggregateScores(variants, outcomes);
  const auto means = MeanOverTasks(rows);
  std::vector<int32_t> lengths;
  std::vector<TaskKind> tasks;
  for (const CaseOutcome& c : outcomes) {
    if (std::find(lengths.begin(), lengths.end(), c.length) == lengths.end()) {
      lengths.push_back(c.length);
    }
    if (std::find(tasks.begin(), tasks.end(), c.task) == tasks.end()) tasks.push_back(c.task);
  }
  std::sort(tasks.begin(), tasks.end());
  std::map<std::pair<TaskKind, int32_t>, int64_t> counts;
  for (const CaseOutcome& c : outcomes) counts[{c.task, c.length}]++;
  nlohmann::json r;
  nlohmann::json tasks_json = nlohmann::json::array();
  for (TaskKind t : tasks) tasks_json.push_back(std::string(TaskName(t)));
  r["tasks"] = tasks_json;
  r["lengths"] = lengths;
  r["cases_per_task"] = counts.empty() ? 0 : counts.begin()->second;
  r["case_offset"] = o.case_offset;
  r["scores"] = ScoreRowsJson(rows);
  r["mean_over_tasks"] = MeanRowsJson(means);
  if (o.dump_cases) r["cases"] = CasesJson(variants, outcomes);
  (*report)["retrieval"] = r;
  for (int32_t len : lengths) {
    auto lookup = [&](const auto& set, auto&& pred) {
      return [&, pred](CompressionPolicyKind p, double rate) {
        for (const auto& x : set) {
          if (!pred(x)) continue;
          if (rate <= 1 ? x.variant.full()
                        : (!x.variant.full() && x.variant.policy == p && x.variant.rate == rate)) {
            return x.accuracy;
          }
        }
        return std::nan("");
      };
    };
    for (TaskKind t : tasks) {
      PrintTable(absl::StrFormat("accuracy %%, %s @ %d tokens (%d cases)", TaskName(t), len,
                                 counts[{t, len}]),
                 o.policies, o.rates, lookup(rows, [&, t](const ScoreRow& x) {
                   return x.length == len && x.task == TaskName(t);
                 }));
    }
    PrintTable(absl::StrFormat("accuracy %%, mean over %d tasks @ %d tokens", tasks.size(), len),
               o.policies, o.rates,
               lookup(means, [&](const MeanRow& x) { return x.length == len; }));
  }
  if (o.plots) {
    auto files = WriteScorePlots(
        o.out, rows, means, o.policies, o.rates,
        absl::StrFormat(" (%d cases/task)", static_cast<int64_t>(r["cases_per_task"])));
    if (!files.ok()) {
      std::cerr << "kvc-eval: plots: " << files.status() << "\n";
      return false;
    }
    (*report)["retrieval"]["plots"] = *files;
  }
  return true;
}

// kvc-eval --merge: re-aggregates the per-case records of several results.json files (runs split
// by --case-offset, e.g. to fit a per-command time limit) into one report.
int Merge(Options o) {
  nlohmann::json report;
  std::vector<CaseOutcome> outcomes;
  std::vector<Variant> variants;
  std::set<std::tuple<int, int32_t, int32_t>> seen;
  nlohmann::json sources = nlohmann::json::array();
  for (size_t f = 0; f < o.merge.size(); ++f) {
    std::ifstream in(o.merge[f]);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!in || j.is_discarded() || !j.is_object()) {
      std::cerr << "kvc-eval: --merge: cannot read JSON from " << o.merge[f] << "\n";
      return 1;
    }
    if (!j.contains("retrieval") || !j["retrieval"].contains("cases")) {
      std::cerr << "kvc-eval: --merge: " << o.merge[f]
                << " has no retrieval.cases (run kvc-eval with --dump-cases)\n";
      return 1;
    }
    if (f == 0) {
      report = j;
      report.erase("retrieval");
      o.policies.clear();
      for (const auto& p : j["policies"]) {
        auto k = ParseCompressionPolicy(p.get<std::string>());
        if (!k.ok()) {
          std::cerr << "kvc-eval: --merge: " << k.status() << "\n";
          return 1;
        }
        o.policies.push_back(*k);
      }
      o.rates = j["rates"].get<std::vector<double>>();
      variants = MakeVariants(o);
    }
    auto cases = CasesFromJson(j["retrieval"]["cases"], variants);
    if (!cases.ok()) {
      std::cerr << "kvc-eval: --merge: " << o.merge[f] << ": " << cases.status() << "\n";
      return 1;
    }
    for (CaseOutcome& c : *cases) {
      if (seen.insert({static_cast<int>(c.task), c.length, c.index}).second) {
        outcomes.push_back(std::move(c));
      }
    }
    sources.push_back(o.merge[f]);
  }
  report["merged_from"] = sources;
  o.dump_cases = true;
  if (!ReportRetrieval(o, variants, outcomes, &report)) return 1;
  const std::string path = o.out + "/results.json";
  std::ofstream out(path);
  out << report.dump(1) << "\n";
  if (!out) {
    std::cerr << "kvc-eval: cannot write " << path << "\n";
    return 1;
  }
  std::cout << "wrote " << path << " (" << outcomes.size() << " cases)\n";
  return 0;
}

int Main(int argc, char** argv) {
  Options o = Parse(argc, argv);
  if (o.threads > 0) setenv("KVC_CPU_THREADS", std::to_string(o.threads).c_str(), 1);
  // Retrieval runs unless --no-retrieval, or --longbench replaces it.
  const bool do_retrieval = o.retrieval && o.longbench.empty();
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) Usage(absl::StrCat("--out: cannot create ", o.out, ": ", ec.message()));
  if (!o.merge.empty()) return Merge(o);
  auto weights = LoadModel(o.model);
  if (!weights.ok()) {
    std::cerr << "kvc-eval: " << weights.status() << "\n";
    return 1;
  }
  auto tok = Tokenizer::FromFile(o.model + "/tokenizer.json");
  if (!tok.ok()) {
    std::cerr << "kvc-eval: " << tok.status() << "\n";
    return 1;
  }
  const std::vector<Variant> variants = MakeVariants(o);
  const unsigned hw = std::thread::hardware_concurrency();
  nlohmann::json report;
  report["model"] = o.model;
  if (o.run.backend == Backend::kCuda) {
    auto gpu = CudaDeviceName(o.run.cuda_device);
    if (!gpu.ok()) {
      std::cerr << "kvc-eval: --backend cuda: " << gpu.status() << "\n";
      return 1;
    }
    report["device"] = absl::StrCat("CUDA backend (bf16) on ", *gpu, ", host ", HostCpuName());
  } else {
    report["device"] =
        absl::StrCat("CPU backend (fp32) on ", HostCpuName(), ", ",
                     o.threads > 0 ? o.threads : static_cast<int32_t>(hw), " threads");
  }
  report["backend"] = std::string(BackendName(o.run.backend));
  report["driver"] = o.driver;
  nlohmann::json settings;
  settings["protected_window"] = o.run.protected_window;
  settings["observation_window"] = o.run.observation_window;
  settings["sink_tokens"] = o.run.sink_tokens;
  settings["min_kvs_per_head"] = o.run.min_kvs_per_head;
  settings["block_size"] = o.run.block_size;
  settings["continual"] = o.run.continual;
  settings["decode_scores"] = o.run.decode_scores;
  settings["score_pool_kernel"] = o.run.score_pool_kernel;
  settings["wave"] = o.run.wave_prompts;
  settings["greedy"] = true;
  report["settings"] = settings;
  nlohmann::json policies_json = nlohmann::json::array();
  for (auto p : o.policies) policies_json.push_back(std::string(CompressionPolicyName(p)));
  report["policies"] = policies_json;
  report["rates"] = o.rates;
  std::cout << absl::StrFormat(
      "kvc-eval: %s, %s driver, %d variants (full + %d policies x %d rates)\n",
      std::string(report["device"]), o.driver, variants.size(), o.policies.size(),
      o.rates.size() - 1);
  const auto t_start = std::chrono::steady_clock::now();
  nlohmann::json timing;

  std::unique_ptr<TaskGenerator> gen;
  if (do_retrieval || o.ppl_windows > 0) {
    auto sources = LoadHaystack(o.haystack);
    if (!sources.ok()) {
      std::cerr << "kvc-eval: --haystack: " << sources.status() << "\n";
      return 1;
    }
    auto g = TaskGenerator::Create(tok->get(), std::move(*sources));
    if (!g.ok()) {
      std::cerr << "kvc-eval: " << g.status() << "\n";
      return 1;
    }
    gen = std::move(*g);
    nlohmann::json hs;
    hs["path"] = o.haystack;
    for (const auto& [name, n] : gen->SourceTokens()) hs["source_tokens"][name] = n;
    hs["seed_base"] = absl::StrFormat("0x%016x", kEvalSeedBase);
    report["haystack"] = hs;
  }

  // ---- Retrieval tasks ----
  if (do_retrieval) {
    const std::vector<int32_t> stop = AnswerStopIds(**tok);
    std::vector<CaseOutcome> outcomes;
    nlohmann::json per_length = nlohmann::json::array();
    for (int32_t len : o.lengths) {
      if (len > (*weights)->config.max_position_embeddings) {
        std::cerr << "kvc-eval: length " << len << " exceeds the model's context\n";
        return 1;
      }
      std::vector<TaskCase> cases;
      for (TaskKind t : o.tasks) {
        for (int32_t i = 0; i < o.cases; ++i) {
          auto c = gen->Generate(t, len, o.case_offset + i);
          if (!c.ok()) {
            std::cerr << "kvc-eval: " << c.status() << "\n";
            return 1;
          }
          cases.push_back(std::move(*c));
        }
      }
      std::vector<GenerationJob> jobs;
      for (const TaskCase& c : cases) {
        GenerationJob j;
        j.prompt = c.prompt;
        j.max_new_tokens = kAnswerTokens;
        j.stop_token_ids = stop;
        j.seed = c.seed;
        jobs.push_back(std::move(j));
      }
      Progress progress(absl::StrCat("retrieval ", len));
      RunStats stats;
      auto res = Run(o, *weights, jobs, variants, &progress, &stats);
      if (!res.ok()) {
        std::cerr << "kvc-eval: " << res.status() << "\n";
        return 1;
      }
      const double secs = progress.Seconds();
      int32_t preempted = 0;
      for (size_t i = 0; i < cases.size(); ++i) {
        CaseOutcome oc;
        oc.task = cases[i].task;
        oc.length = len;
        oc.index = cases[i].index;
        oc.depth = cases[i].depth;
        oc.target_depth = cases[i].target_depth;
        oc.num_needles = cases[i].num_needles;
        oc.answer = cases[i].answer;
        FillOutcome(**tok, (*res)[i], &oc);
        for (const auto& r : (*res)[i]) preempted += r.preemptions > 0;
        outcomes.push_back(std::move(oc));
      }
      nlohmann::json t;
      t["length"] = len;
      t["prompts"] = cases.size();
      t["seconds"] = secs;
      t["seconds_per_prompt_all_variants"] = secs / cases.size();
      t["preempted_sequences"] = preempted;
      if (o.driver == "shared") t["breakdown"] = StatsJson(stats);
      per_length.push_back(t);
      std::cout << absl::StrFormat(
          "retrieval @ %d: %d prompts x %d variants in %.1f s (%.2f s per prompt)\n", len,
          cases.size(), variants.size(), secs, secs / cases.size());
      if (o.driver == "shared") {
        std::cout << absl::StrFormat(
            "  prefill %.1f s (%d prefills, %d re-prefills with other logits than the first), fork "
            "%.1f s, compress %.1f s (%d plans, %d slot-block reads in %d prefetches + %d single, "
            "%d mirror hits), decode %.1f "
            "s (%d forward calls)\n",
            stats.prefill_seconds, stats.prefills, stats.reprefill_logits_differ,
            stats.fork_seconds, stats.compress_seconds, stats.compressions, stats.slot_block_reads,
            stats.mirror_block_hits, stats.decode_seconds, stats.forward_calls);
      }
    }
    timing["retrieval"] = per_length;
    if (!ReportRetrieval(o, variants, outcomes, &report)) return 1;
  }

  // ---- LongBench ----
  if (!o.longbench.empty()) {
    nlohmann::json lb = nlohmann::json::array();
    const ModelConfig& cfg = (*weights)->config;
    for (const std::string& path : o.longbench) {
      auto samples = LoadLongBench(path);
      if (!samples.ok()) {
        std::cerr << "kvc-eval: --longbench: " << samples.status() << "\n";
        return 1;
      }
      if (static_cast<int32_t>(samples->size()) > o.cases) samples->resize(o.cases);
      if (samples->empty()) continue;
      const std::string dataset = samples->front().dataset;
      std::vector<GenerationJob> jobs;
      for (const LongBenchSample& s : *samples) {
        const std::string tmpl =
            !o.tmpl.empty()
                ? o.tmpl
                : DatasetPromptTemplate(s.dataset).value_or(std::string(kGenericTemplate));
        const int32_t max_new =
            o.max_new_tokens > 0 ? o.max_new_tokens : DatasetMaxNewTokens(s.dataset).value_or(64);
        const int32_t max_prompt =
            o.max_prompt_tokens > 0 ? o.max_prompt_tokens
                                    : static_cast<int32_t>(cfg.max_position_embeddings) - max_new;
        std::string prompt = FormatPrompt(tmpl, s);
        auto ids = (*tok)->Encode(prompt, true);
        if (!ids.ok()) {
          std::cerr << "kvc-eval: " << path << ": " << ids.status() << "\n";
          return 1;
        }
        if (static_cast<int32_t>(ids->size()) > max_prompt) {
          // pred.py: keep the first and last halves of the tokenized prompt.
          const int32_t half = max_prompt / 2;
          std::vector<int32_t> head(ids->begin(), ids->begin() + half);
          std::vector<int32_t> tail(ids->end() - half, ids->end());
          prompt = (*tok)->Decode(head, true) + (*tok)->Decode(tail, true);
        }
        if (!o.chat_template.empty() && !DatasetSkipsChatTemplate(s.dataset)) {
          std::string t = o.chat_template;
          const size_t at = t.find("{prompt}");
          if (at != std::string::npos) t.replace(at, 8, prompt);
          prompt = t;
        }
        ids = (*tok)->Encode(prompt, true);
        if (!ids.ok()) {
          std::cerr << "kvc-eval: " << path << ": " << ids.status() << "\n";
          return 1;
        }
        if (static_cast<int64_t>(ids->size()) + max_new > cfg.max_position_embeddings) {
          ids->resize(cfg.max_position_embeddings - max_new);
        }
        GenerationJob j;
        j.prompt = std::move(*ids);
        j.max_new_tokens = max_new;
        if (s.dataset == "samsum") {
          auto nl = (*tok)->Encode("\n", false);
          if (nl.ok() && !nl->empty()) j.stop_token_ids.push_back(nl->back());
        }
        j.seed = jobs.size();
        jobs.push_back(std::move(j));
      }
      Progress progress(absl::StrCat("longbench ", dataset));
      auto res = Run(o, *weights, jobs, variants, &progress, nullptr);
      if (!res.ok()) {
        std::cerr << "kvc-eval: " << res.status() << "\n";
        return 1;
      }
      std::vector<double> score(variants.size(), 0.0), kept(variants.size(), 0.0);
      nlohmann::json predictions = nlohmann::json::array();
      for (size_t i = 0; i < samples->size(); ++i) {
        const LongBenchSample& s = (*samples)[i];
        nlohmann::json pj;
        pj["_id"] = s.id;
        pj["answers"] = s.answers;
        pj["prompt_tokens"] = jobs[i].prompt.size();
        for (size_t v = 0; v < variants.size(); ++v) {
          const GenerationResult& g = (*res)[i][v];
          const std::string pred = (*tok)->Decode(g.tokens, true);
          const double sc = ScoreLongBenchSample(s.dataset, pred, s.answers, s.all_classes);
          score[v] += sc;
          kept[v] +=
              g.kvs_uncompressed ? static_cast<double>(g.kvs_held) / g.kvs_uncompressed : 1.0;
          pj["pred"][VariantName(variants[v])] = pred;
          pj["score"][VariantName(variants[v])] = sc;
        }
        predictions.push_back(pj);
      }
      nlohmann::json d;
      d["file"] = path;
      d["dataset"] = dataset;
      d["metric"] =
          std::string(MetricName(MetricForDataset(dataset).value_or(LongBenchMetric::kQaF1)));
      d["samples"] = samples->size();
      d["seconds"] = progress.Seconds();
      nlohmann::json vs = nlohmann::json::array();
      std::map<std::pair<int, double>, double> table;
      for (size_t v = 0; v < variants.size(); ++v) {
        nlohmann::json x;
        x["variant"] = VariantName(variants[v]);
        x["policy"] =
            variants[v].full() ? "none" : std::string(CompressionPolicyName(variants[v].policy));
        x["rate"] = variants[v].full() ? 1.0 : variants[v].rate;
        // LongBench reports round(100 * mean, 2).
        x["score"] = std::round(10000.0 * score[v] / samples->size()) / 100.0;
        x["kept_fraction"] = kept[v] / samples->size();
        vs.push_back(x);
        table[{variants[v].full() ? -1 : static_cast<int>(variants[v].policy),
               variants[v].full() ? 1.0 : variants[v].rate}] = score[v] / samples->size();
      }
      d["variants"] = vs;
      if (o.dump_cases) d["predictions"] = predictions;
      auto value = [&](CompressionPolicyKind p, double rate) {
        auto it = table.find({rate <= 1 ? -1 : static_cast<int>(p), rate});
        return it == table.end() ? std::nan("") : it->second;
      };
      PrintTable(absl::StrFormat("LongBench %s (%s x100), %d samples", dataset,
                                 std::string(d["metric"]), samples->size()),
                 o.policies, o.rates, value);
      if (o.plots) {
        std::vector<std::vector<double>> vals;
        for (auto p : o.policies) {
          std::vector<double> y;
          for (double r : o.rates) y.push_back(value(p, r));
          vals.push_back(y);
        }
        const std::string name = absl::StrCat("longbench_", dataset, ".png");
        auto st = WriteVariantPlot(o.out + "/" + name, absl::StrCat("LongBench ", dataset),
                                   std::string(d["metric"]), 0, 1, o.policies, o.rates, vals);
        if (!st.ok()) {
          std::cerr << "kvc-eval: plot: " << st << "\n";
          return 1;
        }
        d["plot"] = name;
      }
      lb.push_back(d);
    }
    report["longbench"] = lb;
  }

  // ---- Perplexity ----
  if (o.ppl_windows > 0) {
    const TaskGenerator* text = gen.get();
    std::unique_ptr<TaskGenerator> ppl_gen;
    if (!o.ppl_haystack.empty() && o.ppl_haystack != o.haystack) {
      auto sources = LoadHaystack(o.ppl_haystack);
      if (!sources.ok()) {
        std::cerr << "kvc-eval: --ppl-haystack: " << sources.status() << "\n";
        return 1;
      }
      auto g = TaskGenerator::Create(tok->get(), std::move(*sources));
      if (!g.ok()) {
        std::cerr << "kvc-eval: " << g.status() << "\n";
        return 1;
      }
      ppl_gen = std::move(*g);
      text = ppl_gen.get();
    }
    auto windows = text->ProseWindows(o.ppl_windows, o.ppl_prefix + o.ppl_tokens);
    if (!windows.ok()) {
      std::cerr << "kvc-eval: " << windows.status() << "\n";
      return 1;
    }
    Progress progress("perplexity");
    auto fn = [&progress](int64_t d, int64_t t) { progress(d, t); };
    auto res = RunPerplexity(*weights, *windows, o.ppl_prefix, variants, o.run, fn);
    if (!res.ok()) {
      std::cerr << "kvc-eval: " << res.status() << "\n";
      return 1;
    }
    nlohmann::json p;
    p["windows"] = o.ppl_windows;
    p["text"] = o.ppl_haystack.empty() ? o.haystack : o.ppl_haystack;
    p["prefix_tokens"] = o.ppl_prefix;
    p["scored_tokens_per_window"] = o.ppl_tokens;
    p["seconds"] = progress.Seconds();
    nlohmann::json rs = nlohmann::json::array();
    std::map<std::pair<int, double>, double> table;
    double full_nll = 0;
    for (const PerplexityResult& r : *res) {
      if (r.variant.full()) full_nll = r.mean_nll;
    }
    for (const PerplexityResult& r : *res) {
      nlohmann::json x;
      x["variant"] = VariantName(r.variant);
      x["policy"] =
          r.variant.full() ? "none" : std::string(CompressionPolicyName(r.variant.policy));
      x["rate"] = r.variant.full() ? 1.0 : r.variant.rate;
      x["tokens"] = r.tokens;
      x["mean_nll"] = r.mean_nll;
      x["perplexity"] = r.perplexity;
      x["nll_increase"] = r.mean_nll - full_nll;
      x["kept_fraction"] = r.kept_fraction;
      rs.push_back(x);
      table[{r.variant.full() ? -1 : static_cast<int>(r.variant.policy),
             r.variant.full() ? 1.0 : r.variant.rate}] = r.mean_nll;
    }
    p["results"] = rs;
    report["perplexity"] = p;
    std::cout << absl::StrFormat(
        "prose from %s: %d windows, %d-token prefix then %d teacher-forced tokens, mean NLL "
        "(nats/token), full cache %.3f:\n",
        std::string(p["text"]), o.ppl_windows, o.ppl_prefix, o.ppl_tokens, full_nll);
    std::cout << absl::StrFormat("%-12s", "policy");
    for (double r : o.rates) std::cout << absl::StrFormat("%8s", absl::StrFormat("%gx", r));
    std::cout << "\n";
    for (auto pol : o.policies) {
      std::cout << absl::StrFormat("%-12s", CompressionPolicyName(pol));
      for (double r : o.rates) {
        auto it = table.find({r <= 1 ? -1 : static_cast<int>(pol), r});
        std::cout << absl::StrFormat("%8.3f", it == table.end() ? std::nan("") : it->second);
      }
      std::cout << "\n";
    }
    std::cout << "\n";
    if (o.plots) {
      double hi = full_nll;
      for (const auto& [k, v] : table) hi = std::max(hi, v);
      std::vector<std::vector<double>> vals;
      for (auto pol : o.policies) {
        std::vector<double> y;
        for (double r : o.rates) {
          auto it = table.find({r <= 1 ? -1 : static_cast<int>(pol), r});
          y.push_back(it == table.end() ? std::nan("") : it->second);
        }
        vals.push_back(y);
      }
      const double lo = std::floor(full_nll * 2 - 1) / 2;
      auto st = WriteVariantPlot(o.out + "/perplexity.png", "prose NLL (teacher forcing)",
                                 "nats/token", std::max(0.0, lo), std::ceil(hi * 2 + 0.01) / 2,
                                 o.policies, o.rates, vals);
      if (!st.ok()) {
        std::cerr << "kvc-eval: plot: " << st << "\n";
        return 1;
      }
      report["perplexity"]["plot"] = "perplexity.png";
    }
  }
  timing["total_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  report["timing"] = timing;
  const std::string json_path = o.out + "/results.json";
  std::ofstream out(json_path);
  out << report.dump(1) << "\n";
  if (!out) {
    std::cerr << "kvc-eval: cannot write " << json_path << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("wrote %s (total %.1f s)\n", json_path,
                               double(timing["total_seconds"]));
  return 0;
}

}  // namespace
}  // namespace kvc::eval

int main(int argc, char** argv) { return kvc::eval::Main(argc, argv); }
