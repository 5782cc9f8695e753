// KvManagerService: gRPC introspection of a worker's KV-manager (kvc.v1.KvManager), plus the
// exporter that publishes the KV-manager's state as `kvc_kv_*` Prometheus metrics. Glue only:
// both read KvManager::Stats()/Capacity(), which are thread-safe. The KvManager must outlive them.
#ifndef KVC_KVMANAGER_KVMANAGER_SERVICE_H_
#define KVC_KVMANAGER_KVMANAGER_SERVICE_H_

#include <functional>

#include "common/metrics.h"
#include "kvc/v1/kvmanager.grpc.pb.h"
#include "kvmanager/kv_manager.h"

namespace kvc {

// Running/waiting request counts are the engine's; the service asks for them through this.
struct QueueDepth {
  int32_t running = 0;
  int32_t waiting = 0;
};

class KvManagerService final : public v1::KvManager::Service {
 public:
  KvManagerService(const KvManager* kv, std::function<QueueDepth()> queue_depth);

  grpc::Status GetCapacity(grpc::ServerContext* ctx, const v1::GetCapacityRequest* req,
                           v1::KvCapacity* resp) override;
  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::GetStatsRequest* req,
                        v1::KvStats* resp) override;

 private:
  const KvManager* kv_;
  std::function<QueueDepth()> queue_depth_;
};

void ToProto(const KvCapacityStats& c, const QueueDepth& q, v1::KvCapacity* out);

// Registers the kvc_kv_* families in `registry` and a collector that refreshes them from `kv`
// at every scrape. `per_head` adds kvc_kv_head_kvs{layer,head} (L*H series).
void ExportKvMetrics(const KvManager* kv, MetricsRegistry* registry, bool per_head);

}  // namespace kvc

#endif  // KVC_KVMANAGER_KVMANAGER_SERVICE_H_
