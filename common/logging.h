// Minimal leveled logging to stderr: `KVC_LOG(INFO) << "worker listening on " << addr;`
// Lines carry a timestamp, the level letter, the thread id and file:line. The minimum level is
// set by SetMinLogLevel() (the processes map their --log_level flag to it). Thread-safe: each
// line is written with a single write call.
#ifndef KVC_COMMON_LOGGING_H_
#define KVC_COMMON_LOGGING_H_

#include <sstream>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvc {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error".
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace kvc

#define KVC_LOG_LEVEL_DEBUG ::kvc::LogLevel::kDebug
#define KVC_LOG_LEVEL_INFO ::kvc::LogLevel::kInfo
#define KVC_LOG_LEVEL_WARNING ::kvc::LogLevel::kWarning
#define KVC_LOG_LEVEL_ERROR ::kvc::LogLevel::kError

#define KVC_LOG(level)                                \
  if (KVC_LOG_LEVEL_##level < ::kvc::MinLogLevel()) { \
  } else                                              \
    ::kvc::internal::LogMessage(KVC_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#endif  // KVC_COMMON_LOGGING_H_
