// bench/capacity: how compression turns into decode batch size on the CPU engine.
//
// Runs N requests (random prompts of --input-len tokens, --output-len tokens with ignore_eos,
// all submitted at once) through the in-process Engine with a KV pool sized to hold exactly
// --fit-uncompressed requests uncompressed, once per compression rate, and prints for each rate:
// mean and max decode batch, preemptions, compressions, wall time, tokens/s — against the
// compression-off run measured in the same process. Not a test: numbers, not assertions.
//
//   kvc-bench-capacity [--num-prompts 32] [--input-len 512] [--output-len 64]
//                      [--fit-uncompressed 4] [--rates 1,2,4,8] [--policy kvcompress]
//                      [--model DIR | (random weights of a small Llama)] [--json FILE]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "model/config.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"

namespace kvc {
namespace {

constexpr char kDefaultConfig[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 6,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
  "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "tie_word_embeddings": true,
  "torch_dtype": "float32"})";

struct Options {
  int num_prompts = 32;
  int input_len = 512;
  int output_len = 64;
  int fit_uncompressed = 4;
  int block_size = 16;
  std::vector<double> rates = {1, 2, 4, 8};
  std::string policy = "kvcompress";
  std::string model_dir;
  std::string json;
};

struct Result {
  double rate = 1;
  double mean_batch = 0;
  int max_batch = 0;
  int preemptions = 0;
  int64_t compressions = 0;
  double seconds = 0;
  double tokens_per_s = 0;
  double final_ratio = 0;
};

Result RunOnce(std::shared_ptr<const ModelWeights> weights, const Options& o, double rate,
               CompressionPolicyKind policy) {
  const ModelConfig& c = weights->config;
  const int64_t heads = static_cast<int64_t>(c.num_hidden_layers) * c.num_key_value_heads;
  const int64_t per_request =
      heads * ((o.input_len + o.output_len + o.block_size - 1) / o.block_size);
  const int64_t num_blocks = per_request * o.fit_uncompressed;
  auto ex = CpuExecutor::Create(weights, num_blocks, o.block_size);
  if (!ex.ok()) {
    std::cerr << ex.status() << "\n";
    std::exit(1);
  }
  KvManagerOptions ko;
  ko.layout = (*ex)->layout();
  auto kv = KvManager::Create(ko);
  EngineOptions eo;
  eo.max_num_seqs = 256;
  eo.max_prefill_tokens = 4 * o.input_len;
  Engine engine(std::move(*ex), std::move(*kv), eo, nullptr);
  std::mt19937 rng(1);
  int finished = 0, preemptions = 0;
  double ratio_sum = 0;
  for (int i = 0; i < o.num_prompts; ++i) {
    EngineRequest r;
    r.request_id = "r" + std::to_string(i);
    for (int t = 0; t < o.input_len; ++t) r.prompt.push_back(3 + rng() % (c.vocab_size - 3));
    r.sampling.temperature = 0;
    r.max_tokens = o.output_len;
    r.ignore_eos = true;
    r.policy = rate > 1 ? policy : CompressionPolicyKind::kNone;
    r.compression.mode = rate > 1 ? BudgetMode::kRate : BudgetMode::kNone;
    r.compression.compression_rate = rate;
    r.compression.constraints.protected_window = 32;
    r.observation_window = 32;
    r.continual = true;
    auto st = engine.Submit(std::move(r), [&](EngineOutput out) {
      if (out.finished) {
        finished++;
        preemptions += out.usage.preemptions;
        ratio_sum += out.usage.compression_ratio;
      }
    });
    if (!st.ok()) {
      std::cerr << "submit: " << st << "\n";
      std::exit(1);
    }
  }
  Result res;
  res.rate = rate;
  int64_t steps = 0, batch_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  while (engine.StepForTest()) {
    const int running = engine.num_running();
    if (running > 0) {
      steps++;
      batch_sum += running;
      res.max_batch = std::max(res.max_batch, running);
    }
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  res.mean_batch = steps ? static_cast<double>(batch_sum) / steps : 0;
  res.preemptions = preemptions;
  for (const auto& [k, v] : engine.kv_manager().Stats(false).compressions_by_trigger) {
    res.compressions += v;
  }
  res.tokens_per_s =
      static_cast<double>(o.num_prompts) * (o.input_len + o.output_len) / res.seconds;
  res.final_ratio = finished ? ratio_sum / finished : 0;
  return res;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    auto num = [&](int* out) {
      if (!absl::SimpleAtoi(next(), out)) {
        std::cerr << a << ": not an integer\n";
        std::exit(2);
      }
    };
    if (a == "--num-prompts") {
      num(&o.num_prompts);
    } else if (a == "--input-len") {
      num(&o.input_len);
    } else if (a == "--output-len") {
      num(&o.output_len);
    } else if (a == "--fit-uncompressed") {
      num(&o.fit_uncompressed);
    } else if (a == "--block-size") {
      num(&o.block_size);
    } else if (a == "--rates") {
      o.rates.clear();
      for (auto s : absl::StrSplit(next(), ',')) {
        double r;
        if (!absl::SimpleAtod(s, &r) || r < 1) {
          std::cerr << "--rates: each rate must be a number >= 1\n";
          return 2;
        }
        o.rates.push_back(r);
      }
    } else if (a == "--policy") {
      o.policy = next();
    } else if (a == "--model") {
      o.model_dir = next();
    } else if (a == "--json") {
      o.json = next();
    } else {
      std::cerr << "unknown option " << a << "\n";
      return 2;
    }
  }
  auto policy = ParseCompressionPolicy(o.policy);
  if (!policy.ok()) {
    std::cerr << "--policy: " << policy.status() << "\n";
    return 2;
  }
  std::shared_ptr<const ModelWeights> weights;
  std::string model_name;
  if (!o.model_dir.empty()) {
    auto w = LoadModel(o.model_dir);
    if (!w.ok()) {
      std::cerr << w.status() << "\n";
      return 1;
    }
    weights = *w;
    model_name = o.model_dir;
  } else {
    auto cfg = ModelConfig::FromJsonString(kDefaultConfig, "bench-random");
    auto w = ModelWeights::Random(*cfg, 1);
    weights = std::make_shared<const ModelWeights>(std::move(*w));
    model_name = "random Llama (6 layers, 4 q / 2 kv heads, head_dim 64, hidden 256)";
  }
  std::cout << absl::StrFormat(
      "kvc capacity benchmark — CPU backend on %s\nmodel: %s\n%d requests x (%d prompt + %d "
      "output) tokens, KV pool sized for %d uncompressed requests, block %d, policy %s, "
      "protected window 32\n\n",
      HostCpuName(), model_name, o.num_prompts, o.input_len, o.output_len, o.fit_uncompressed,
      o.block_size, o.policy);
  std::cout << absl::StrFormat("%6s %10s %9s %11s %12s %9s %10s %14s %14s\n", "rate", "mean_batch",
                               "max_batch", "batch_x_off", "preemptions", "compress", "seconds",
                               "tokens_per_s", "final_ratio");
  std::vector<Result> results;
  std::ofstream json;
  if (!o.json.empty()) json.open(o.json);
  for (double r : o.rates) {
    Result res = RunOnce(weights, o, r, *policy);
    results.push_back(res);
    const double base = results.front().max_batch;
    std::cout << absl::StrFormat("%6.1f %10.2f %9d %10.2fx %12d %9d %10.2f %14.1f %13.2fx\n", r,
                                 res.mean_batch, res.max_batch, res.max_batch / base,
                                 res.preemptions, res.compressions, res.seconds, res.tokens_per_s,
                                 res.final_ratio);
    if (json) {
      json << absl::StrFormat(
          "{\"rate\": %g, \"mean_batch\": %.3f, \"max_batch\": %d, \"preemptions\": %d, "
          "\"compressions\": %d, \"seconds\": %.3f, \"tokens_per_s\": %.1f, "
          "\"final_ratio\": %.3f, \"policy\": \"%s\"}\n",
          r, res.mean_batch, res.max_batch, res.preemptions, res.compressions, res.seconds,
          res.tokens_per_s, res.final_ratio, o.policy);
    }
  }
  std::cout << "\nbatch_x_off: max decode batch relative to the first rate in the list (the "
               "baseline, measured in this run).\n";
  return 0;
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) { return kvc::Main(argc, argv); }
