#include "kvmanager/kv_manager.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace kvc {

absl::Status KvManagerOptions::Validate() const {
  if (layout.num_layers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.num_layers must be > 0, got ", layout.num_layers));
  }
  if (layout.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.num_kv_heads must be > 0, got ", layout.num_kv_heads));
  }
  if (layout.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.head_dim must be > 0, got ", layout.head_dim));
  }
  if (layout.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.block_size must be > 0, got ", layout.block_size));
  }
  if (layout.num_blocks <= 0 || layout.num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.num_blocks must be in [1, 2^31-1], got ", layout.num_blocks));
  }
  if (static_cast<int64_t>(layout.num_layers) * layout.num_kv_heads >
      std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("layout.num_layers * layout.num_kv_heads overflows int32");
  }
  return absl::OkStatus();
}

KvManager::KvManager(const KvManagerOptions& options)
    : layout_(options.layout), pool_(options.layout.num_blocks) {
  KVC_CHECK_OK(options.Validate());
  layer_blocks_.assign(layout_.num_layers, 0);
  head_kvs_.assign(layout_.heads_per_seq(), 0);
}

absl::StatusOr<std::unique_ptr<KvManager>> KvManager::Create(const KvManagerOptions& options) {
  absl::Status status = options.Validate();
  if (!status.ok()) return status;
  return std::make_unique<KvManager>(options);
}

const KvManager::Sequence* KvManager::FindLocked(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

KvManager::Sequence* KvManager::FindLocked(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

absl::Status KvManager::AddSequence(int64_t seq_id) {
  absl::MutexLock lock(&mu_);
  if (FindLocked(seq_id) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already exists"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->tables.heads.resize(layout_.heads_per_seq());
  seqs_.emplace(seq_id, std::move(seq));
  return absl::OkStatus();
}

int64_t KvManager::BlocksNeededLocked(const Sequence& seq, int64_t n) const {
  int64_t needed = 0;
  for (const HeadBlockTable& head : seq.tables.heads) {
    needed += BlocksFor(head.num_kvs + n) - static_cast<int64_t>(head.blocks.size());
  }
  return needed;
}

int64_t KvManager::BlocksNeededToAppend(int64_t seq_id, int32_t n) const {
  if (n < 0) return -1;
  absl::ReaderMutexLock lock(&mu_);
  const Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return -1;
  return BlocksNeededLocked(*seq, n);
}

int64_t KvManager::BlocksForNewSequence(int64_t num_tokens) const {
  if (num_tokens <= 0) return 0;
  return static_cast<int64_t>(layout_.heads_per_seq()) * BlocksFor(num_tokens);
}

absl::Status KvManager::Append(int64_t seq_id, int32_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot append ", n, " KVs"));
  absl::MutexLock lock(&mu_);
  Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  if (n == 0) return absl::OkStatus();
  // Every head holds at most `tokens` KVs, so this bounds every head's new count.
  if (seq->tokens + n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, " would exceed 2^31-1 ",
                                                   "tokens (", seq->tokens, " + ", n, ")"));
  }
  const int64_t needed = BlocksNeededLocked(*seq, n);
  scratch_ids_.clear();
  absl::Status status = pool_.AllocateInto(needed, &scratch_ids_);
  if (!status.ok()) {
    return Annotate(status, absl::StrCat("appending ", n, " tokens to sequence ", seq_id));
  }
  size_t next = 0;
  for (int32_t h = 0; h < layout_.heads_per_seq(); ++h) {
    HeadBlockTable& head = seq->tables.heads[h];
    const int64_t want = BlocksFor(head.num_kvs + n);
    const int64_t add = want - static_cast<int64_t>(head.blocks.size());
    for (int64_t i = 0; i < add; ++i) head.blocks.push_back(scratch_ids_[next++]);
    layer_blocks_[h / layout_.num_kv_heads] += add;
    head.num_kvs += n;
    head_kvs_[h] += n;
  }
  KVC_CHECK_EQ(next, scratch_ids_.size());
  const int64_t kvs = static_cast<int64_t>(n) * layout_.heads_per_seq();
  seq->tokens += n;
  seq->kvs_held += kvs;
  seq->blocks += needed;
  tokens_ += n;
  kvs_held_ += kvs;
  return absl::OkStatus();
}

absl::Status KvManager::FreeSequence(int64_t seq_id) {
  absl::MutexLock lock(&mu_);
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  Sequence& seq = *it->second;
  for (int32_t h = 0; h < layout_.heads_per_seq(); ++h) {
    HeadBlockTable& head = seq.tables.heads[h];
    pool_.Free(head.blocks);
    layer_blocks_[h / layout_.num_kv_heads] -= static_cast<int64_t>(head.blocks.size());
    head_kvs_[h] -= head.num_kvs;
  }
  tokens_ -= seq.tokens;
  kvs_held_ -= seq.kvs_held;
  seqs_.erase(it);
  return absl::OkStatus();
}

const SequenceBlockTables* KvManager::Tables(int64_t seq_id) const {
  absl::ReaderMutexLock lock(&mu_);
  const Sequence* seq = FindLocked(seq_id);
  return seq == nullptr ? nullptr : &seq->tables;
}

bool KvManager::HasSequence(int64_t seq_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return FindLocked(seq_id) != nullptr;
}

absl::StatusOr<SequenceUsage> KvManager::Usage(int64_t seq_id) const {
  absl::ReaderMutexLock lock(&mu_);
  const Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  SequenceUsage usage;
  usage.tokens = seq->tokens;
  usage.kvs_held = seq->kvs_held;
  usage.kvs_uncompressed = seq->tokens * layout_.heads_per_seq();
  usage.blocks = seq->blocks;
  usage.compressions = seq->compressions;
  usage.evicted_kvs = seq->evicted_kvs;
  return usage;
}

std::vector<int64_t> KvManager::SequenceIds() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<int64_t> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, seq] : seqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

int64_t KvManager::num_sequences() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int64_t>(seqs_.size());
}

int64_t KvManager::num_free_blocks() const {
  absl::ReaderMutexLock lock(&mu_);
  return pool_.num_free();
}

absl::StatusOr<int64_t> KvManager::EvictBlocksForBudget(int64_t seq_id,
                                                        const CompressionSettings& settings) const {
  absl::ReaderMutexLock lock(&mu_);
  const Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  return kvc::EvictBlocksForBudget(settings, layout_, seq->tokens, seq->blocks, seq->kvs_held);
}

absl::StatusOr<EvictionPlan> KvManager::PlanEviction(int64_t seq_id, const KvSlotReader& reader,
                                                     int64_t evict_blocks,
                                                     const EvictionConstraints& constraints,
                                                     EvictionPlanner* planner) const {
  absl::ReaderMutexLock lock(&mu_);
  const Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  return planner->Plan(layout_, seq->tables, reader, seq->tokens, evict_blocks, constraints);
}

absl::Status KvManager::ApplyEviction(int64_t seq_id, const EvictionPlan& plan,
                                      CompressionTrigger trigger, std::vector<KvMove>* moves) {
  absl::MutexLock lock(&mu_);
  Sequence* seq = FindLocked(seq_id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq_id));
  const int32_t b = layout_.block_size;

  // Validate everything before touching anything.
  int32_t previous = -1;
  int64_t blocks_freed = 0;
  int64_t kvs_evicted = 0;
  for (const HeadEviction& ev : plan.heads) {
    if (ev.head_index <= previous || ev.head_index >= layout_.heads_per_seq()) {
      return absl::InvalidArgumentError(absl::StrCat("plan head indices must be ascending and < ",
                                                     layout_.heads_per_seq(), ", got ",
                                                     ev.head_index, " after ", previous));
    }
    previous = ev.head_index;
    const HeadBlockTable& head = seq->tables.heads[ev.head_index];
    const int64_t nb = static_cast<int64_t>(head.blocks.size());
    if (ev.num_kvs_before != head.num_kvs) {
      return absl::FailedPreconditionError(
          absl::StrCat("stale plan: head index ", ev.head_index, " of sequence ", seq_id, " holds ",
                       head.num_kvs, " KVs, the plan was made for ", ev.num_kvs_before));
    }
    if (ev.blocks_freed < 1 || ev.blocks_freed > nb) {
      return absl::InvalidArgumentError(absl::StrCat("plan frees ", ev.blocks_freed,
                                                     " blocks of head index ", ev.head_index,
                                                     " which has ", nb));
    }
    const int32_t r = (head.num_kvs - 1) % b + 1;
    if (ev.kvs_evicted != (ev.blocks_freed - 1) * b + r) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plan evicts ", ev.kvs_evicted, " KVs from head index ", ev.head_index, " to free ",
          ev.blocks_freed, " blocks; must be ", (ev.blocks_freed - 1) * b + r));
    }
    if (!ev.evicted_slots.empty() &&
        static_cast<int64_t>(ev.evicted_slots.size()) != ev.kvs_evicted) {
      return absl::InvalidArgumentError(absl::StrCat("plan lists ", ev.evicted_slots.size(),
                                                     " evicted slots for head index ",
                                                     ev.head_index, ", expected ", ev.kvs_evicted));
    }
    if (static_cast<int64_t>(ev.freed_blocks.size()) != ev.blocks_freed ||
        !std::equal(ev.freed_blocks.begin(), ev.freed_blocks.end(),
                    head.blocks.end() - ev.blocks_freed)) {
      return absl::FailedPreconditionError(absl::StrCat("stale plan: freed blocks of head index ",
                                                        ev.head_index, " of sequence ", seq_id,
                                                        " are not the tail of its block list"));
    }
    blocks_freed += ev.blocks_freed;
    kvs_evicted += ev.kvs_evicted;
  }

  int64_t moved = 0;
  for (const HeadEviction& ev : plan.heads) {
    HeadBlockTable& head = seq->tables.heads[ev.head_index];
    pool_.Free(ev.freed_blocks);
    head.blocks.resize(head.blocks.size() - ev.blocks_freed);
    head.num_kvs -= ev.kvs_evicted;
    head_kvs_[ev.head_index] -= ev.kvs_evicted;
    layer_blocks_[ev.head_index / layout_.num_kv_heads] -= ev.blocks_freed;
    moved += static_cast<int64_t>(ev.moves.size());
    if (moves != nullptr) moves->insert(moves->end(), ev.moves.begin(), ev.moves.end());
  }
  seq->blocks -= blocks_freed;
  seq->kvs_held -= kvs_evicted;
  seq->evicted_kvs += kvs_evicted;
  kvs_held_ -= kvs_evicted;
  evicted_kvs_total_ += kvs_evicted;
  compactions_total_ += static_cast<int64_t>(plan.heads.size());
  moved_kvs_total_ += moved;
  if (blocks_freed > 0) {
    ++seq->compressions;
    ++compressions_by_trigger_[std::string(CompressionTriggerName(trigger))];
  }
  return absl::OkStatus();
}

void KvManager::RecordPreemption() {
  absl::MutexLock lock(&mu_);
  ++preemptions_total_;
}

KvCapacityStats KvManager::CapacityLocked() const {
  KvCapacityStats cap;
  const int64_t heads = layout_.heads_per_seq();
  cap.total_blocks = pool_.num_total();
  cap.free_blocks = pool_.num_free();
  cap.block_size = layout_.block_size;
  cap.physical_free_tokens = cap.free_blocks * layout_.block_size / heads;
  cap.total_tokens = cap.total_blocks * layout_.block_size / heads;
  const int64_t uncompressed = tokens_ * heads;
  cap.compression_ratio =
      kvs_held_ > 0 ? static_cast<double>(uncompressed) / static_cast<double>(kvs_held_) : 1.0;
  cap.effective_free_tokens =
      static_cast<int64_t>(static_cast<double>(cap.physical_free_tokens) * cap.compression_ratio);
  cap.sequences = static_cast<int64_t>(seqs_.size());
  return cap;
}

KvCapacityStats KvManager::Capacity() const {
  absl::ReaderMutexLock lock(&mu_);
  return CapacityLocked();
}

KvStats KvManager::Stats(bool include_heads) const {
  absl::ReaderMutexLock lock(&mu_);
  KvStats stats;
  stats.capacity = CapacityLocked();
  stats.num_layers = layout_.num_layers;
  stats.num_kv_heads = layout_.num_kv_heads;
  stats.used_blocks = pool_.num_used();
  stats.kvs_held = kvs_held_;
  stats.kvs_uncompressed = tokens_ * layout_.heads_per_seq();
  stats.layers.resize(layout_.num_layers);
  for (int32_t l = 0; l < layout_.num_layers; ++l) {
    LayerOccupancy& layer = stats.layers[l];
    layer.layer = l;
    layer.blocks = layer_blocks_[l];
    for (int32_t h = 0; h < layout_.num_kv_heads; ++h) {
      layer.kvs += head_kvs_[layout_.HeadIndex(l, h)];
    }
    if (include_heads) {
      const auto first = head_kvs_.begin() + layout_.HeadIndex(l, 0);
      layer.head_kvs.assign(first, first + layout_.num_kv_heads);
    }
  }
  stats.evicted_kvs_total = evicted_kvs_total_;
  stats.compactions_total = compactions_total_;
  stats.moved_kvs_total = moved_kvs_total_;
  stats.compressions_by_trigger = compressions_by_trigger_;
  stats.preemptions_total = preemptions_total_;
  return stats;
}

absl::Status KvManager::CheckInvariants() const {
  absl::ReaderMutexLock lock(&mu_);
  absl::Status pool_status = pool_.CheckInvariants();
  if (!pool_status.ok()) return pool_status;
  if (pool_.num_total() != layout_.num_blocks) {
    return absl::InternalError(
        absl::StrCat("pool has ", pool_.num_total(), " blocks, layout says ", layout_.num_blocks));
  }

  // Owner of each block: index into `owners`, or -1.
  struct Owner {
    int64_t seq;
    int32_t head;
  };
  std::vector<Owner> owners;
  std::vector<int64_t> owner_of(pool_.num_total(), -1);
  auto describe = [&](const Owner& o) {
    return absl::StrCat("(seq ", o.seq, ", layer ", o.head / layout_.num_kv_heads, ", head ",
                        o.head % layout_.num_kv_heads, ")");
  };

  int64_t used = 0;
  int64_t total_kvs = 0;
  int64_t total_tokens = 0;
  std::vector<int64_t> layer_blocks(layout_.num_layers, 0);
  std::vector<int64_t> head_kvs(layout_.heads_per_seq(), 0);
  for (const auto& [seq_id, seq_ptr] : seqs_) {
    const Sequence& seq = *seq_ptr;
    if (static_cast<int32_t>(seq.tables.heads.size()) != layout_.heads_per_seq()) {
      return absl::InternalError(absl::StrCat("sequence ", seq_id, " has ", seq.tables.heads.size(),
                                              " heads, expected ", layout_.heads_per_seq()));
    }
    int64_t seq_kvs = 0;
    int64_t seq_blocks = 0;
    for (int32_t h = 0; h < layout_.heads_per_seq(); ++h) {
      const HeadBlockTable& head = seq.tables.heads[h];
      const Owner me{seq_id, h};
      if (head.num_kvs < 0 || head.num_kvs > seq.tokens) {
        return absl::InternalError(absl::StrCat(describe(me), " holds ", head.num_kvs,
                                                " KVs; the sequence has ", seq.tokens, " tokens"));
      }
      if (static_cast<int64_t>(head.blocks.size()) != BlocksFor(head.num_kvs)) {
        return absl::InternalError(absl::StrCat(describe(me), " holds ", head.num_kvs, " KVs in ",
                                                head.blocks.size(), " blocks, expected ",
                                                BlocksFor(head.num_kvs)));
      }
      for (size_t j = 0; j < head.blocks.size(); ++j) {
        const int32_t id = head.blocks[j];
        if (id < 0 || id >= pool_.num_total()) {
          return absl::InternalError(
              absl::StrCat(describe(me), " block ", j, " has out-of-range id ", id));
        }
        if (pool_.IsFree(id)) {
          return absl::InternalError(
              absl::StrCat("block ", id, " is free but owned by ", describe(me)));
        }
        if (owner_of[id] >= 0) {
          return absl::InternalError(absl::StrCat("block ", id, " owned by both ",
                                                  describe(owners[owner_of[id]]), " and ",
                                                  describe(me)));
        }
        owner_of[id] = static_cast<int64_t>(owners.size());
        owners.push_back(me);
      }
      seq_kvs += head.num_kvs;
      seq_blocks += static_cast<int64_t>(head.blocks.size());
      layer_blocks[h / layout_.num_kv_heads] += static_cast<int64_t>(head.blocks.size());
      head_kvs[h] += head.num_kvs;
    }
    if (seq_kvs != seq.kvs_held) {
      return absl::InternalError(absl::StrCat("sequence ", seq_id, " records ", seq.kvs_held,
                                              " KVs held, its heads hold ", seq_kvs));
    }
    if (seq_blocks != seq.blocks) {
      return absl::InternalError(absl::StrCat("sequence ", seq_id, " records ", seq.blocks,
                                              " blocks, its heads hold ", seq_blocks));
    }
    used += seq_blocks;
    total_kvs += seq_kvs;
    total_tokens += seq.tokens;
  }
  if (used + pool_.num_free() != pool_.num_total()) {
    return absl::InternalError(absl::StrCat(used, " owned + ", pool_.num_free(), " free != ",
                                            pool_.num_total(), " total blocks (leak)"));
  }
  if (total_kvs != kvs_held_) {
    return absl::InternalError(
        absl::StrCat("aggregate kvs_held ", kvs_held_, " != recount ", total_kvs));
  }
  if (total_tokens != tokens_) {
    return absl::InternalError(
        absl::StrCat("aggregate tokens ", tokens_, " != recount ", total_tokens));
  }
  for (int32_t l = 0; l < layout_.num_layers; ++l) {
    if (layer_blocks[l] != layer_blocks_[l]) {
      return absl::InternalError(absl::StrCat("aggregate blocks of layer ", l, " ",
                                              layer_blocks_[l], " != recount ", layer_blocks[l]));
    }
  }
  for (int32_t h = 0; h < layout_.heads_per_seq(); ++h) {
    if (head_kvs[h] != head_kvs_[h]) {
      return absl::InternalError(absl::StrCat("aggregate KVs of head index ", h, " ", head_kvs_[h],
                                              " != recount ", head_kvs[h]));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc
