#include "kvmanager/kvmanager_service.h"

#include <string>

namespace kvc {

void ToProto(const KvCapacityStats& c, const QueueDepth& q, v1::KvCapacity* out) {
  out->set_total_blocks(c.total_blocks);
  out->set_free_blocks(c.free_blocks);
  out->set_block_size(c.block_size);
  out->set_physical_free_tokens(c.physical_free_tokens);
  out->set_compression_ratio(c.compression_ratio);
  out->set_effective_free_tokens(c.effective_free_tokens);
  out->set_total_tokens(c.total_tokens);
  out->set_running_requests(q.running);
  out->set_waiting_requests(q.waiting);
}

KvManagerService::KvManagerService(const KvManager* kv, std::function<QueueDepth()> queue_depth)
    : kv_(kv), queue_depth_(std::move(queue_depth)) {}

grpc::Status KvManagerService::GetCapacity(grpc::ServerContext*, const v1::GetCapacityRequest*,
                                           v1::KvCapacity* resp) {
  ToProto(kv_->Capacity(), queue_depth_ ? queue_depth_() : QueueDepth{}, resp);
  return grpc::Status::OK;
}

grpc::Status KvManagerService::GetStats(grpc::ServerContext*, const v1::GetStatsRequest* req,
                                        v1::KvStats* resp) {
  KvStats s = kv_->Stats(req->include_heads());
  ToProto(s.capacity, queue_depth_ ? queue_depth_() : QueueDepth{}, resp->mutable_capacity());
  resp->set_kvs_held(s.kvs_held);
  resp->set_kvs_uncompressed(s.kvs_uncompressed);
  for (const auto& l : s.layers) {
    auto* o = resp->add_layers();
    o->set_layer(l.layer);
    o->set_blocks(l.blocks);
    o->set_kvs(l.kvs);
    for (int64_t h : l.head_kvs) o->add_head_kvs(h);
  }
  resp->set_evicted_kvs_total(s.evicted_kvs_total);
  resp->set_compactions_total(s.compactions_total);
  resp->set_moved_kvs_total(s.moved_kvs_total);
  for (const auto& [k, v] : s.compressions_by_trigger) {
    (*resp->mutable_compressions_by_trigger())[k] = v;
  }
  resp->set_preemptions_total(s.preemptions_total);
  resp->set_num_layers(s.num_layers);
  resp->set_num_kv_heads(s.num_kv_heads);
  return grpc::Status::OK;
}

void ExportKvMetrics(const KvManager* kv, MetricsRegistry* r, bool per_head) {
  auto& blocks_total = r->AddGauge("kvc_kv_blocks", "KV blocks in the pool.").Get();
  auto& blocks_free = r->AddGauge("kvc_kv_blocks_free", "Free KV blocks.").Get();
  auto& held = r->AddGauge("kvc_kv_kvs_held", "KVs held (summed over layers and kv heads).").Get();
  auto& uncompressed = r->AddGauge("kvc_kv_kvs_uncompressed",
                                   "KVs an uncompressed cache would hold for the same tokens.")
                           .Get();
  auto& ratio = r->AddGauge("kvc_kv_compression_ratio",
                            "kvs_uncompressed / kvs_held over running sequences (1 if none).")
                    .Get();
  auto& phys =
      r->AddGauge("kvc_kv_physical_free_tokens", "Tokens that fit uncompressed in the free blocks.")
          .Get();
  auto& eff = r->AddGauge("kvc_kv_effective_capacity_tokens",
                          "Tokens of an average request that still fit, at the current "
                          "compression ratio (physical free tokens x ratio).")
                  .Get();
  auto& seqs = r->AddGauge("kvc_kv_sequences", "Sequences holding KV blocks.").Get();
  auto& evicted =
      r->AddCounter("kvc_kv_evicted_kvs_total", "KVs evicted by compression since start.").Get();
  auto& compactions =
      r->AddCounter("kvc_kv_compactions_total", "Head block lists compacted since start.").Get();
  auto& moved =
      r->AddCounter("kvc_kv_moved_kvs_total", "KVs moved into holes by compaction since start.")
          .Get();
  auto& compressions = r->AddCounter("kvc_kv_compressions_total",
                                     "Compressions that freed blocks, by trigger.", {"trigger"});
  auto& preempt =
      r->AddCounter("kvc_kv_preemptions_total", "Sequences preempted by recompute.").Get();
  auto& layer_kvs = r->AddGauge("kvc_kv_layer_kvs", "KVs held per layer.", {"layer"});
  Family<Gauge>* head_kvs =
      per_head
          ? &r->AddGauge("kvc_kv_head_kvs", "KVs held per (layer, kv head).", {"layer", "head"})
          : nullptr;
  r->AddCollector([=, &blocks_total, &blocks_free, &held, &uncompressed, &ratio, &phys, &eff, &seqs,
                   &evicted, &compactions, &moved, &compressions, &preempt, &layer_kvs]() {
    KvStats s = kv->Stats(per_head);
    blocks_total.Set(static_cast<double>(s.capacity.total_blocks));
    blocks_free.Set(static_cast<double>(s.capacity.free_blocks));
    held.Set(static_cast<double>(s.kvs_held));
    uncompressed.Set(static_cast<double>(s.kvs_uncompressed));
    ratio.Set(s.capacity.compression_ratio);
    phys.Set(static_cast<double>(s.capacity.physical_free_tokens));
    eff.Set(static_cast<double>(s.capacity.effective_free_tokens));
    seqs.Set(static_cast<double>(s.capacity.sequences));
    evicted.Mirror(static_cast<double>(s.evicted_kvs_total));
    compactions.Mirror(static_cast<double>(s.compactions_total));
    moved.Mirror(static_cast<double>(s.moved_kvs_total));
    for (const auto& [k, v] : s.compressions_by_trigger) {
      compressions.WithLabels({k}).Mirror(static_cast<double>(v));
    }
    preempt.Mirror(static_cast<double>(s.preemptions_total));
    for (const auto& l : s.layers) {
      layer_kvs.WithLabels({std::to_string(l.layer)}).Set(static_cast<double>(l.kvs));
      if (head_kvs) {
        for (size_t h = 0; h < l.head_kvs.size(); ++h) {
          head_kvs->WithLabels({std::to_string(l.layer), std::to_string(h)})
              .Set(static_cast<double>(l.head_kvs[h]));
        }
      }
    }
  });
}

}  // namespace kvc
