#include "worker/executor.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"

namespace kvc {

std::vector<float> RopeInvFreqFor(const ModelConfig& c, int32_t head_dim) {
  cpu::RopeFrequencyParams rp;
  rp.head_dim = head_dim;
  rp.theta = c.rope_theta;
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    rp.llama3 = true;
    rp.factor = c.rope_scaling.factor;
    rp.low_freq_factor = c.rope_scaling.low_freq_factor;
    rp.high_freq_factor = c.rope_scaling.high_freq_factor;
    rp.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
  }
  return cpu::RopeInvFreq(rp);
}

absl::Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& c,
                                  const KvLayout& layout, bool check_block_ids) {
  const int32_t bs = layout.block_size;
  if (batch.score_pool_kernel < 0 ||
      (batch.score_pool_kernel > 1 && batch.score_pool_kernel % 2 == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.score_pool_kernel must be 0, 1 or odd, got ", batch.score_pool_kernel));
  }
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const ForwardSequence& s = batch.seqs[i];
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch.seqs[", i, "] (seq_id ", s.seq_id, "): ", what));
    };
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return bad("tokens is empty");
    if (s.start_position < 0) return bad(absl::StrCat("start_position ", s.start_position, " < 0"));
    if (s.start_position + n - 1 > std::numeric_limits<int32_t>::max()) {
      return bad("start_position + tokens overflows int32");
    }
    for (int64_t t = 0; t < n; ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= c.vocab_size) {
        return bad(absl::StrCat("tokens[", t, "] = ", s.tokens[t],
                                " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    if (s.score_queries < 0) return bad(absl::StrCat("score_queries ", s.score_queries, " < 0"));
    if (s.sample) {
      const absl::Status st = ValidateSamplingOptions(s.sampling);
      if (!st.ok()) return bad(absl::StrCat("sampling: ", st.message()));
    } else if (!batch.return_logits && !s.all_logits) {
      return bad("return_logits is false but the sequence neither samples nor asks for all_logits");
    }
    if (s.tables == nullptr) return bad("tables is null");
    if (static_cast<int32_t>(s.tables->heads.size()) != layout.heads_per_seq()) {
      return bad(absl::StrCat("tables has ", s.tables->heads.size(), " heads, expected ",
                              layout.heads_per_seq(), " (layers x kv heads)"));
    }
    for (size_t h = 0; h < s.tables->heads.size(); ++h) {
      const HeadBlockTable& t = s.tables->heads[h];
      if (t.num_kvs < n) {
        return bad(absl::StrCat("tables.heads[", h, "].num_kvs ", t.num_kvs, " < tokens ", n,
                                " (room for the new tokens must be reserved)"));
      }
      const int64_t want_blocks = (static_cast<int64_t>(t.num_kvs) + bs - 1) / bs;
      if (static_cast<int64_t>(t.blocks.size()) != want_blocks) {
        return bad(absl::StrCat("tables.heads[", h, "] has ", t.blocks.size(), " blocks for ",
                                t.num_kvs, " KVs, expected ", want_blocks));
      }
      if (!check_block_ids) continue;
      for (int32_t b : t.blocks) {
        if (b < 0 || b >= layout.num_blocks) {
          return bad(absl::StrCat("tables.heads[", h, "] holds block id ", b, " outside [0, ",
                                  layout.num_blocks, ")"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc
