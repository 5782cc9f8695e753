// Status propagation macros used at every module boundary of kvc.
//
//   RETURN_IF_ERROR(expr);               returns the absl::Status of `expr` when it is not OK.
//   ASSIGN_OR_RETURN(auto x, expr);      unwraps an absl::StatusOr<T> or returns its status.
//
// The pinned Abseil (20220623) has no status_macros.h, so these live here (as in Triton core).
#ifndef KVC_COMMON_STATUS_MACROS_H_
#define KVC_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVC_STATUS_CONCAT_INNER_(x, y) x##y
#define KVC_STATUS_CONCAT_(x, y) KVC_STATUS_CONCAT_INNER_(x, y)

#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status kvc_status_ = (expr);       \
    if (!kvc_status_.ok()) return kvc_status_; \
  } while (0)

#define KVC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  KVC_ASSIGN_OR_RETURN_IMPL_(KVC_STATUS_CONCAT_(kvc_statusor_, __LINE__), lhs, rexpr)

namespace kvc {

// Returns `status` with `context + ": "` prepended to its message (code unchanged).
inline absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(context) + ": " + std::string(status.message()));
}

}  // namespace kvc

#endif  // KVC_COMMON_STATUS_MACROS_H_
