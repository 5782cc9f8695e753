// Conversion between absl::Status (used everywhere inside kvc) and grpc::Status (only at RPC
// edges). The numeric codes are identical, so the mapping is lossless in both directions.
#ifndef KVC_COMMON_GRPC_STATUS_H_
#define KVC_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace kvc {

grpc::Status ToGrpcStatus(const absl::Status& s);
absl::Status FromGrpcStatus(const grpc::Status& s);

}  // namespace kvc

#endif  // KVC_COMMON_GRPC_STATUS_H_
