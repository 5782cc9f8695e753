// KV-Compress end to end on the CPU backend: prefill + decode with compression (executor +
// KvManager + policy, driven step by step as the engine does), checked against a naive, fully
// independent fp32 reference that attends over exactly the KVs the plan kept. Compression
// changes which KVs exist, never the arithmetic on them; and the scores the executor keeps beside
// each KV equal the spec's definition (squared probabilities of the last w prompt queries,
// max-pooled over keys per query head, summed over the GQA group, plus every decode query's).
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sampling.h"
#include "kvmanager/compression_budget.h"
#include "kvmanager/compression_policy.h"
#include "kvmanager/kv_manager.h"
#include "model/config.h"
#include "model/weights.h"
#include "worker/cpu_executor.h"
#include "worker/engine.h"

namespace kvc {
namespace {

constexpr char kConfig[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 101, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"})";

std::shared_ptr<const ModelWeights> Weights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto cfg = ModelConfig::FromJsonString(kConfig, "compression-test");
    EXPECT_TRUE(cfg.ok()) << cfg.status();
    auto weights = ModelWeights::Random(*cfg, 7);
    EXPECT_TRUE(weights.ok()) << weights.status();
    return std::make_shared<const ModelWeights>(std::move(*weights));
  }();
  return w;
}

// ---- The naive reference: dense, per-position, written from the formulas. ----
class NaiveModel {
 public:
  explicit NaiveModel(const ModelWeights& w) : w_(w), c_(w.config) {
    cpu::RopeFrequencyParams rp;
    rp.head_dim = c_.head_dim;
    rp.theta = c_.rope_theta;
    inv_freq_ = cpu::RopeInvFreq(rp);
    kv_.resize(c_.num_hidden_layers * c_.num_key_value_heads);
  }

  struct Kv {
    std::vector<float> k, v;
    double score = 0;  // the KV-Compress score, accumulated as the spec defines it
  };

  // Processes tokens at positions pos0.. (one by one, so each token sees exactly the KVs present
  // when it is processed), restricted to `keep` (per head: the positions that still exist; every
  // position is kept when keep is empty). Returns the logits of the last token. When
  // `score_last_w` > 0 (a prefill), the last w tokens' squared probabilities, max-pooled over
  // keys (kernel 7) per query head and summed over the group, are added to the scores; when
  // `decode_scores`, each processed token adds its squared probabilities.
  std::vector<float> Run(const std::vector<int32_t>& tokens, int32_t pos0, int score_last_w,
                         bool decode_scores) {
    const int H = c_.hidden_size, d = c_.head_dim, nq = c_.num_attention_heads,
              nkv = c_.num_key_value_heads, G = nq / nkv;
    std::vector<float> logits;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int pos = pos0 + static_cast<int>(i);
      const bool in_window =
          score_last_w > 0 && static_cast<int>(tokens.size() - i) <= score_last_w;
      std::vector<double> x(w_.embed_tokens.begin() + tokens[i] * H,
                            w_.embed_tokens.begin() + (tokens[i] + 1) * H);
      for (int l = 0; l < c_.num_hidden_layers; ++l) {
        const LayerWeights& lw = w_.layers[l];
        auto xn = Norm(x, lw.input_norm);
        auto q = Linear(lw.q_proj, xn, nq * d);
        auto k = Linear(lw.k_proj, xn, nkv * d);
        auto v = Linear(lw.v_proj, xn, nkv * d);
        for (int h = 0; h < nq; ++h) Rope(&q[h * d], pos);
        for (int h = 0; h < nkv; ++h) Rope(&k[h * d], pos);
        for (int h = 0; h < nkv; ++h) {
          Kv e;
          e.k.assign(k.begin() + h * d, k.begin() + (h + 1) * d);
          e.v.assign(v.begin() + h * d, v.begin() + (h + 1) * d);
          kv_[l * nkv + h][pos] = e;
        }
        std::vector<double> attn(nq * d, 0.0);
        for (int qh = 0; qh < nq; ++qh) {
          auto& head = kv_[l * nkv + qh / G];
          std::vector<std::pair<int, double>> logit;
          double mx = -1e300;
          for (auto& [p, e] : head) {
            if (p > pos) continue;
            double s = 0;
            for (int t = 0; t < d; ++t) s += q[qh * d + t] * e.k[t];
            s /= std::sqrt(static_cast<double>(d));
            logit.push_back({p, s});
            mx = std::max(mx, s);
          }
          double sum = 0;
          for (auto& [p, s] : logit) sum += std::exp(s - mx);
          for (auto& [p, s] : logit) {
            const double prob = std::exp(s - mx) / sum;
            const Kv& e = head.at(p);
            for (int t = 0; t < d; ++t) attn[qh * d + t] += prob * e.v[t];
            if (decode_scores && score_last_w == 0) head[p].score += prob * prob;
            if (in_window) window_probs_[{l, qh, pos}][p] = prob;
          }
        }
        auto o = Linear(lw.o_proj, attn, H);
        for (int t = 0; t < H; ++t) x[t] += o[t];
        auto xn2 = Norm(x, lw.post_norm);
        auto g = Linear(lw.gate_proj, xn2, c_.intermediate_size);
        auto u = Linear(lw.up_proj, xn2, c_.intermediate_size);
        for (int t = 0; t < c_.intermediate_size; ++t) g[t] = g[t] / (1 + std::exp(-g[t])) * u[t];
        auto dn = Linear(lw.down_proj, g, H);
        for (int t = 0; t < H; ++t) x[t] += dn[t];
      }
      if (i + 1 == tokens.size()) {
        auto xf = Norm(x, w_.final_norm);
        auto lg = Linear(w_.lm_head, xf, c_.vocab_size);
        logits.assign(lg.begin(), lg.end());
      }
    }
    if (score_last_w > 0) AddWindowScores(pos0 + static_cast<int>(tokens.size()), score_last_w);
    return logits;
  }

  // Drops every KV whose position is not in keep[head].
  void Restrict(const std::vector<std::set<int>>& keep) {
    for (size_t h = 0; h < kv_.size(); ++h) {
      for (auto it = kv_[h].begin(); it != kv_[h].end();) {
        it = keep[h].count(it->first) ? std::next(it) : kv_[h].erase(it);
      }
    }
  }
  const std::map<int, Kv>& head(int index) const { return kv_[index]; }

 private:
  // Spec §2.1 for a prefill of `n` tokens: A_j(k) = Σ_{q in last w} p_j(q,k)^2, max-pooled
  // (kernel 7) along keys per query head, summed over the group.
  void AddWindowScores(int n, int w) {
    const int nq = c_.num_attention_heads, nkv = c_.num_key_value_heads, G = nq / nkv;
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      for (int h = 0; h < nkv; ++h) {
        auto& head = kv_[l * nkv + h];
        std::vector<int> positions;
        for (auto& [p, e] : head) positions.push_back(p);
        for (int g = 0; g < G; ++g) {
          const int qh = h * G + g;
          std::vector<double> a(positions.size(), 0.0);
          for (int q = n - w; q < n; ++q) {
            auto it = window_probs_.find({l, qh, q});
            if (it == window_probs_.end()) continue;
            for (size_t s = 0; s < positions.size(); ++s) {
              auto pit = it->second.find(positions[s]);
              if (pit != it->second.end()) a[s] += pit->second * pit->second;
            }
          }
          for (size_t s = 0; s < positions.size(); ++s) {
            double m = 0;
            for (int t = std::max<int>(0, s - 3); t <= std::min<int>(positions.size() - 1, s + 3);
                 ++t) {
              m = std::max(m, a[t]);
            }
            head[positions[s]].score += m;
          }
        }
      }
    }
    window_probs_.clear();
  }

  std::vector<double> Norm(const std::vector<double>& x, const std::vector<float>& wt) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1.0 / std::sqrt(ss / x.size() + c_.rms_norm_eps);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * r * wt[i];
    return out;
  }
  std::vector<double> Linear(const std::vector<float>& wt, const std::vector<double>& x,
                             int out_dim) const {
    std::vector<double> y(out_dim, 0.0);
    for (int o = 0; o < out_dim; ++o) {
      for (size_t i = 0; i < x.size(); ++i) y[o] += wt[o * x.size() + i] * x[i];
    }
    return y;
  }
  void Rope(double* v, int pos) const {
    const int half = c_.head_dim / 2;
    for (int i = 0; i < half; ++i) {
      const double a = pos * static_cast<double>(inv_freq_[i]);
      const double x0 = v[i], x1 = v[i + half];
      v[i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[i + half] = x1 * std::cos(a) + x0 * std::sin(a);
    }
  }

  const ModelWeights& w_;
  const ModelConfig& c_;
  std::vector<float> inv_freq_;
  std::vector<std::map<int, Kv>> kv_;  // [layer * nkv + head]: position -> KV
  std::map<std::tuple<int, int, int>, std::map<int, double>> window_probs_;
};

double MaxRelError(const std::vector<float>& got, const std::vector<float>& want) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(want[i])));
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return err / std::max(mx, 1e-12);
}

struct Case {
  CompressionPolicyKind policy;
  int32_t block_size;
  double rate;
  int32_t protected_window;
};

class CompressionReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(CompressionReferenceTest, OutputsAndScoresMatchTheNaiveReferenceOverTheKeptKvs) {
  const Case tc = GetParam();
  auto weights = Weights();
  const ModelConfig& cfg = weights->config;
  auto ex = CpuExecutor::Create(weights, 2048, tc.block_size);
  ASSERT_TRUE(ex.ok()) << ex.status();
  CpuExecutor& executor = **ex;
  KvManagerOptions ko;
  ko.layout = executor.layout();
  KvManager kv(ko);
  const KvLayout& layout = kv.layout();
  auto policy = MakeCompressionPolicy(tc.policy);
  CompressionSettings settings;
  settings.mode = BudgetMode::kRate;
  settings.compression_rate = tc.rate;
  settings.constraints.protected_window = tc.protected_window;
  ASSERT_TRUE(settings.Validate(layout).ok());
  NaiveModel ref(*weights);

  std::mt19937 rng(11);
  std::vector<int32_t> tokens(90);
  for (auto& t : tokens) t = 3 + rng() % 95;
  const int w = 16;
  const int64_t seq = 1;
  ASSERT_TRUE(kv.AddSequence(seq).ok());

  auto compress = [&](CompressionTrigger trigger) -> int64_t {
    auto evict = kv.EvictBlocksForBudget(seq, settings);
    EXPECT_TRUE(evict.ok());
    if (*evict <= 0) return 0;
    auto plan = PlanSequenceEviction(kv, seq, executor.slot_reader(), *evict, settings.constraints,
                                     99, *policy);
    EXPECT_TRUE(plan.ok()) << plan.status();
    std::vector<KvMove> moves;
    EXPECT_TRUE(kv.ApplyEviction(seq, *plan, trigger, &moves).ok());
    EXPECT_TRUE(executor.MoveKvs(moves).ok());
    EXPECT_TRUE(kv.CheckInvariants().ok());
    return plan->blocks_freed;
  };
  // Positions the engine still holds, per head (from the tables + the executor's positions).
  auto kept = [&] {
    std::vector<std::set<int>> keep(layout.heads_per_seq());
    const SequenceBlockTables* t = kv.Tables(seq);
    for (int h = 0; h < layout.heads_per_seq(); ++h) {
      const auto& head = t->heads[h];
      for (int s = 0; s < head.num_kvs; ++s) {
        keep[h].insert(executor.Position(head.blocks[s / tc.block_size], s % tc.block_size));
      }
    }
    return keep;
  };
  // Every kept KV's score equals the reference's score for that position.
  auto check_scores = [&](const char* when) {
    const SequenceBlockTables* t = kv.Tables(seq);
    double worst = 0;
    for (int h = 0; h < layout.heads_per_seq(); ++h) {
      const auto& head = t->heads[h];
      for (int s = 0; s < head.num_kvs; ++s) {
        const int32_t b = head.blocks[s / tc.block_size], o = s % tc.block_size;
        const auto& r = ref.head(h).at(executor.Position(b, o));
        worst = std::max(
            worst, std::fabs(executor.Score(b, o) - r.score) / std::max(1e-6, std::fabs(r.score)));
      }
    }
    EXPECT_LE(worst, 1e-4) << "scores " << when;
  };

  // Prefill with window scores.
  ASSERT_TRUE(kv.Append(seq, static_cast<int32_t>(tokens.size())).ok());
  ForwardBatch batch;
  ForwardSequence fs;
  fs.seq_id = seq;
  fs.tokens = tokens;
  fs.tables = kv.Tables(seq);
  const bool scored = tc.policy == CompressionPolicyKind::kKvCompress ||
                      tc.policy == CompressionPolicyKind::kSnapKv ||
                      tc.policy == CompressionPolicyKind::kPyramidKv;
  fs.score_queries = scored ? w : 0;
  fs.score_pool = true;
  batch.seqs.push_back(fs);
  ForwardOutput out;
  ASSERT_TRUE(executor.Forward(batch, &out).ok());
  auto want = ref.Run(tokens, 0, scored ? w : 0, false);
  EXPECT_LE(MaxRelError(out.logits, want), 1e-4) << "prefill logits";
  if (scored) check_scores("after prefill");
  ASSERT_GT(compress(CompressionTrigger::kPrefill), 0) << "the budget should force evictions";
  const int64_t held_after_prefill = kv.Usage(seq)->kvs_held;
  EXPECT_LT(held_after_prefill, static_cast<int64_t>(tokens.size()) * layout.heads_per_seq());
  ref.Restrict(kept());
  if (scored) check_scores("after compaction");

  // Decode 40 tokens greedily, compressing back to budget whenever the sequence grows over it.
  int compressions = 1;
  int32_t next = ArgmaxToken(out.logits);
  for (int step = 0; step < 40; ++step) {
    const int32_t pos = static_cast<int32_t>(tokens.size());
    tokens.push_back(next);
    ASSERT_TRUE(kv.Append(seq, 1).ok());
    ForwardBatch db;
    ForwardSequence d;
    d.seq_id = seq;
    d.tokens = std::span<const int32_t>(tokens).subspan(pos, 1);
    d.start_position = pos;
    d.tables = kv.Tables(seq);
    d.score_queries = scored ? 1 : 0;
    db.seqs.push_back(d);
    ASSERT_TRUE(executor.Forward(db, &out).ok());
    want = ref.Run({next}, pos, 0, scored);
    ASSERT_LE(MaxRelError(out.logits, want), 1e-4) << "decode step " << step;
    if (scored) check_scores("after a decode step");
    if (compress(CompressionTrigger::kContinual) > 0) {
      compressions++;
      ref.Restrict(kept());
    }
    next = ArgmaxToken(out.logits);
  }
  EXPECT_GE(compressions, 2);
  // After compression every compressed head holds only full blocks, and the sequence is near
  // its budget.
  const auto usage = *kv.Usage(seq);
  const int64_t target = TargetKvsForRate(layout, usage.tokens, tc.rate, tc.protected_window);
  EXPECT_LE(usage.kvs_held, target + layout.heads_per_seq() * tc.block_size);
  ASSERT_TRUE(kv.FreeSequence(seq).ok());
  EXPECT_EQ(kv.num_free_blocks(), kv.num_total_blocks());
}

INSTANTIATE_TEST_SUITE_P(Policies, CompressionReferenceTest,
                         ::testing::Values(Case{CompressionPolicyKind::kKvCompress, 8, 4.0, 8},
                                           Case{CompressionPolicyKind::kKvCompress, 16, 2.0, 16},
                                           Case{CompressionPolicyKind::kKvCompress, 1, 8.0, 4},
                                           Case{CompressionPolicyKind::kSnapKv, 8, 4.0, 8},
                                           Case{CompressionPolicyKind::kPyramidKv, 8, 3.0, 8},
                                           Case{CompressionPolicyKind::kStreaming, 8, 4.0, 8},
                                           Case{CompressionPolicyKind::kRandom, 8, 4.0, 8}));

}  // namespace
}  // namespace kvc
