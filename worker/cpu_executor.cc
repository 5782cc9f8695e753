#include "worker/cpu_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_scores.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace kvc {
namespace {

// Sequences with at most this many tokens in a step (decode, short chunks) run their attention
// in parallel across sequences; longer ones run one at a time, each parallel inside.
constexpr int64_t kSmallAttentionTokens = 8;

}  // namespace

CpuExecutor::CpuExecutor(std::shared_ptr<const ModelWeights> weights, KvLayout layout)
    : weights_(std::move(weights)), layout_(layout), slot_reader_({}, {}, layout.block_size) {}

absl::StatusOr<std::unique_ptr<CpuExecutor>> CpuExecutor::Create(
    std::shared_ptr<const ModelWeights> weights, int64_t num_blocks, int32_t block_size) {
  if (weights == nullptr) return absl::InvalidArgumentError("CpuExecutor: weights are null");
  const ModelConfig& c = weights->config;
  RETURN_IF_ERROR(Annotate(c.Validate(), "CpuExecutor: model config"));
  if (static_cast<int32_t>(weights->layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("CpuExecutor: weights hold ",
                                                   weights->layers.size(), " layers, config ",
                                                   c.num_hidden_layers));
  }
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks must be >= 1, got ", num_blocks));
  }
  if (block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be >= 1, got ", block_size));
  }
  if (num_blocks > std::numeric_limits<int32_t>::max() ||
      num_blocks > (int64_t{1} << 40) / (static_cast<int64_t>(block_size) * c.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_blocks ", num_blocks, " x block_size ", block_size, " is too large"));
  }
  KvLayout layout;
  layout.num_layers = c.num_hidden_layers;
  layout.num_kv_heads = c.num_key_value_heads;
  layout.head_dim = c.head_dim;
  layout.block_size = block_size;
  layout.num_blocks = num_blocks;
  std::unique_ptr<CpuExecutor> e(new CpuExecutor(std::move(weights), layout));
  const int64_t slots = num_blocks * block_size;
  try {
    e->k_cache_.assign(slots * c.head_dim, 0.0f);
    e->v_cache_.assign(slots * c.head_dim, 0.0f);
    e->scores_.assign(slots, 0.0f);
    e->positions_.assign(slots, 0);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("CpuExecutor: cannot allocate the KV pool (",
                                                     num_blocks, " blocks of ", block_size,
                                                     " KVs, head_dim ", c.head_dim, ")"));
  }
  e->inv_freq_ = RopeInvFreqFor(c, c.head_dim);
  e->slot_reader_ = FlatKvSlotReader(e->scores_, e->positions_, block_size);
  return e;
}

int64_t CpuExecutor::SlotIndex(int32_t block, int32_t offset) const {
  KVC_CHECK(block >= 0 && block < layout_.num_blocks) << "block " << block;
  KVC_CHECK(offset >= 0 && offset < layout_.block_size) << "offset " << offset;
  return static_cast<int64_t>(block) * layout_.block_size + offset;
}

std::span<const float> CpuExecutor::Key(int32_t block, int32_t offset) const {
  return std::span<const float>(k_cache_).subspan(SlotIndex(block, offset) * layout_.head_dim,
                                                  layout_.head_dim);
}

std::span<const float> CpuExecutor::Value(int32_t block, int32_t offset) const {
  return std::span<const float>(v_cache_).subspan(SlotIndex(block, offset) * layout_.head_dim,
                                                  layout_.head_dim);
}

float CpuExecutor::Score(int32_t block, int32_t offset) const {
  return scores_[SlotIndex(block, offset)];
}

int32_t CpuExecutor::Position(int32_t block, int32_t offset) const {
  return positions_[SlotIndex(block, offset)];
}

void CpuExecutor::SetScore(int32_t block, int32_t offset, float score) {
  scores_[SlotIndex(block, offset)] = score;
}

absl::Status CpuExecutor::MoveKv(int32_t src_block, int32_t src_offset, int32_t dst_block,
                                 int32_t dst_offset) {
  auto check = [&](int32_t block, int32_t offset, const char* what) -> absl::Status {
    if (block < 0 || block >= layout_.num_blocks || offset < 0 || offset >= layout_.block_size) {
      return absl::InvalidArgumentError(absl::StrCat("MoveKv: ", what, " (block ", block,
                                                     ", offset ", offset, ") is out of range"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(src_block, src_offset, "source"));
  RETURN_IF_ERROR(check(dst_block, dst_offset, "destination"));
  const int64_t src = SlotIndex(src_block, src_offset);
  const int64_t dst = SlotIndex(dst_block, dst_offset);
  if (src == dst) return absl::OkStatus();
  const int32_t d = layout_.head_dim;
  std::memcpy(&k_cache_[dst * d], &k_cache_[src * d], sizeof(float) * d);
  std::memcpy(&v_cache_[dst * d], &v_cache_[src * d], sizeof(float) * d);
  scores_[dst] = scores_[src];
  positions_[dst] = positions_[src];
  return absl::OkStatus();
}

absl::Status CpuExecutor::Forward(const ForwardBatch& batch, ForwardOutput* out) {
  if (out == nullptr) return absl::InvalidArgumentError("Forward: out is null");
  RETURN_IF_ERROR(ValidateForwardBatch(batch, config(), layout()));
  const ModelConfig& c = config();
  const ModelWeights& w = *weights_;
  const int32_t h = c.hidden_size, qd = c.q_size(), kvd = c.kv_size(), im = c.intermediate_size;
  const int32_t d = c.head_dim, bs = layout_.block_size, hkv = c.num_key_value_heads;
  const int64_t qkv_w = static_cast<int64_t>(qd) + 2 * kvd;
  const size_t num_seqs = batch.seqs.size();

  // Token rows of the batch: sequence s owns rows [offs[s], offs[s + 1]).
  std::vector<int64_t> offs(num_seqs + 1, 0);
  for (size_t s = 0; s < num_seqs; ++s) offs[s + 1] = offs[s] + batch.seqs[s].tokens.size();
  const int64_t total = offs[num_seqs];
  if (total > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("Forward: too many tokens in one batch");
  }
  const int32_t rows = static_cast<int32_t>(total);
  out->vocab_size = c.vocab_size;
  out->logits.clear();
  if (rows == 0) return absl::OkStatus();

  try {
    ids_.resize(rows);
    token_pos_.resize(rows);
    x_.resize(static_cast<size_t>(rows) * h);
    normed_.resize(static_cast<size_t>(rows) * h);
    qkv_.resize(static_cast<size_t>(rows) * qkv_w);
    attn_.resize(static_cast<size_t>(rows) * qd);
    mlp_.resize(static_cast<size_t>(rows) * 2 * im);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Forward: cannot allocate activations for ", rows, " tokens"));
  }
  for (size_t s = 0; s < num_seqs; ++s) {
    const ForwardSequence& seq = batch.seqs[s];
    for (size_t i = 0; i < seq.tokens.size(); ++i) {
      ids_[offs[s] + i] = seq.tokens[i];
      token_pos_[offs[s] + i] = seq.start_position + static_cast<int32_t>(i);
    }
  }

  cpu::EmbeddingParams ep;
  ep.num_tokens = rows;
  ep.hidden = h;
  ep.ids = ids_.data();
  ep.table = w.embed_tokens.data();
  ep.out = x_.data();
  cpu::Embedding(ep);

  auto matmul = [&](const float* x, int64_t x_stride, int32_t in, const std::vector<float>& wt,
                    const std::vector<float>& bias, int32_t n_out, float* y, int64_t y_stride,
                    bool accumulate) {
    cpu::MatmulParams mp;
    mp.rows = rows;
    mp.in = in;
    mp.out = n_out;
    mp.x = x;
    mp.x_stride = x_stride;
    mp.w = wt.data();
    mp.bias = bias.empty() ? nullptr : bias.data();
    mp.y = y;
    mp.y_stride = y_stride;
    mp.accumulate = accumulate;
    cpu::Matmul(mp);
  };
  auto rms_norm = [&](const std::vector<float>& weight) {
    cpu::RmsNormParams np;
    np.rows = rows;
    np.dim = h;
    np.eps = c.rms_norm_eps;
    np.x = x_.data();
    np.weight = weight.data();
    np.out = normed_.data();
    cpu::RmsNorm(np);
  };

  if (probs_.size() < num_seqs) probs_.resize(num_seqs);
  // Per-sequence attention inputs (block table pointers and counts of each kv head).
  std::vector<std::vector<const int32_t*>> tables(num_seqs, std::vector<const int32_t*>(hkv));
  std::vector<std::vector<int32_t>> counts(num_seqs, std::vector<int32_t>(hkv));
  bool all_small = true;
  for (size_t s = 0; s < num_seqs; ++s) {
    all_small = all_small && batch.seqs[s].tokens.size() <= kSmallAttentionTokens;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  for (int32_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    // Attention block.
    rms_norm(lw.input_norm);
    matmul(normed_.data(), h, h, lw.q_proj, lw.q_bias, qd, qkv_.data(), qkv_w, false);
    matmul(normed_.data(), h, h, lw.k_proj, lw.k_bias, kvd, qkv_.data() + qd, qkv_w, false);
    matmul(normed_.data(), h, h, lw.v_proj, lw.v_bias, kvd, qkv_.data() + qd + kvd, qkv_w, false);
    cpu::RopeParams rp;
    rp.num_tokens = rows;
    rp.head_dim = d;
    rp.x = qkv_.data();
    rp.stride = qkv_w;
    rp.positions = token_pos_.data();
    rp.inv_freq = inv_freq_.data();
    rp.num_heads = c.num_attention_heads;
    rp.first_head_offset = 0;
    cpu::Rope(rp);
    rp.num_heads = hkv;
    rp.first_head_offset = qd;
    cpu::Rope(rp);

    // Append the new K/V (and positions, zero scores) into each head's tail slots.
    for (size_t s = 0; s < num_seqs; ++s) {
      const ForwardSequence& seq = batch.seqs[s];
      const int32_t n = static_cast<int32_t>(seq.tokens.size());
      for (int32_t j = 0; j < hkv; ++j) {
        const HeadBlockTable& table = seq.tables->heads[layout_.HeadIndex(l, j)];
        tables[s][j] = table.blocks.data();
        counts[s][j] = table.num_kvs;
        for (int32_t i = 0; i < n; ++i) {
          const int32_t slot = table.num_kvs - n + i;
          const int64_t idx = static_cast<int64_t>(table.blocks[slot / bs]) * bs + slot % bs;
          const float* row = qkv_.data() + (offs[s] + i) * qkv_w;
          std::memcpy(&k_cache_[idx * d], row + qd + j * d, sizeof(float) * d);
          std::memcpy(&v_cache_[idx * d], row + qd + kvd + j * d, sizeof(float) * d);
          positions_[idx] = seq.start_position + i;
          scores_[idx] = 0.0f;
        }
      }
    }
    auto attend = [&](size_t s) {
      cpu::PagedAttentionParams ap;
      ap.num_queries = static_cast<int32_t>(batch.seqs[s].tokens.size());
      ap.num_q_heads = c.num_attention_heads;
      ap.num_kv_heads = hkv;
      ap.head_dim = d;
      ap.block_size = bs;
      ap.scale = scale;
      ap.q = qkv_.data() + offs[s] * qkv_w;
      ap.q_stride = qkv_w;
      ap.q_positions = token_pos_.data() + offs[s];
      ap.k_cache = k_cache_.data();
      ap.v_cache = v_cache_.data();
      ap.kv_positions = positions_.data();
      ap.block_tables = tables[s].data();
      ap.num_kvs = counts[s].data();
      ap.out = attn_.data() + offs[s] * qd;
      ap.out_stride = qd;
      const ForwardSequence& fs = batch.seqs[s];
      const int32_t scored = std::min<int32_t>(fs.score_queries, ap.num_queries);
      int32_t max_kvs = 0;
      if (scored > 0) {
        for (int32_t j = 0; j < hkv; ++j) max_kvs = std::max(max_kvs, counts[s][j]);
        probs_[s].assign(static_cast<size_t>(scored) * c.num_attention_heads * max_kvs, 0.0f);
        ap.probs = probs_[s].data();
        ap.probs_first_query = ap.num_queries - scored;
        ap.probs_stride = max_kvs;
      }
      cpu::PagedAttention(ap);
      if (scored > 0) {
        cpu::KvScoreParams kp;
        kp.num_queries = scored;
        kp.num_q_heads = c.num_attention_heads;
        kp.num_kv_heads = hkv;
        kp.block_size = bs;
        kp.pool_kernel = fs.score_pool ? batch.score_pool_kernel : 0;
        kp.probs = probs_[s].data();
        kp.probs_stride = max_kvs;
        kp.block_tables = tables[s].data();
        kp.num_kvs = counts[s].data();
        kp.scores = scores_.data();
        cpu::AccumulateKvScores(kp);
      }
    };
    if (all_small && num_seqs > 1) {
      cpu::ParallelFor(static_cast<int64_t>(num_seqs), 1, [&](int64_t b, int64_t e) {
        for (int64_t s = b; s < e; ++s) attend(static_cast<size_t>(s));
      });
    } else {
      for (size_t s = 0; s < num_seqs; ++s) attend(s);
    }
    matmul(attn_.data(), qd, qd, lw.o_proj, lw.o_bias, h, x_.data(), h, /*accumulate=*/true);

    // MLP block: gate and up side by side in mlp_ [rows, 2 * im]; SwiGLU in place into gate.
    rms_norm(lw.post_norm);
    matmul(normed_.data(), h, h, lw.gate_proj, lw.gate_bias, im, mlp_.data(), 2 * im, false);
    matmul(normed_.data(), h, h, lw.up_proj, lw.up_bias, im, mlp_.data() + im, 2 * im, false);
    cpu::SwiGluParams sp;
    sp.rows = rows;
    sp.dim = im;
    sp.gate = mlp_.data();
    sp.gate_stride = 2 * im;
    sp.up = mlp_.data() + im;
    sp.up_stride = 2 * im;
    sp.out = mlp_.data();
    sp.out_stride = 2 * im;
    cpu::SwiGlu(sp);
    matmul(mlp_.data(), 2 * im, im, lw.down_proj, lw.down_bias, h, x_.data(), h, true);
  }

  // Final norm + LM head on the rows that return logits.
  std::vector<int64_t> out_rows;
  for (size_t s = 0; s < num_seqs; ++s) {
    if (batch.seqs[s].all_logits) {
      for (int64_t r = offs[s]; r < offs[s + 1]; ++r) out_rows.push_back(r);
    } else {
      out_rows.push_back(offs[s + 1] - 1);
    }
  }
  const int32_t num_out = static_cast<int32_t>(out_rows.size());
  try {
    logits_in_.resize(static_cast<size_t>(num_out) * h);
    out->logits.resize(static_cast<size_t>(num_out) * c.vocab_size);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Forward: cannot allocate logits for ", num_out, " rows"));
  }
  for (int32_t r = 0; r < num_out; ++r) {
    cpu::RmsNormParams np;
    np.rows = 1;
    np.dim = h;
    np.eps = c.rms_norm_eps;
    np.x = x_.data() + out_rows[r] * h;
    np.weight = w.final_norm.data();
    np.out = logits_in_.data() + static_cast<int64_t>(r) * h;
    cpu::RmsNorm(np);
  }
  cpu::MatmulParams mp;
  mp.rows = num_out;
  mp.in = h;
  mp.out = c.vocab_size;
  mp.x = logits_in_.data();
  mp.w = w.lm_head_data();
  mp.y = out->logits.data();
  cpu::Matmul(mp);
  return absl::OkStatus();
}

absl::Status CpuExecutor::MoveKvs(std::span<const KvMove> moves) {
  for (const KvMove& m : moves) {
    RETURN_IF_ERROR(MoveKv(m.src_block, m.src_offset, m.dst_block, m.dst_offset));
  }
  return absl::OkStatus();
}

}  // namespace kvc
