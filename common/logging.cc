#include "common/logging.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "common/check.h"

namespace kvc {
namespace {
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

const char* Basename(const char* path) {
  const char* slash = path;
  for (const char* p = path; *p; ++p) {
    if (*p == '/') slash = p + 1;
  }
  return slash;
}

std::string Prefix(char letter, const char* file, int line) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  int micros = static_cast<int>(
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000);
  std::tm tm;
  localtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%c%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] ", letter,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, micros,
                static_cast<int>(gettid()), Basename(file), line);
  return buf;
}

void WriteLine(std::string line) {
  line.push_back('\n');
  // One write() per line keeps lines from different threads whole.
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
}
}  // namespace

void SetMinLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }
LogLevel MinLogLevel() { return static_cast<LogLevel>(g_min_level.load()); }

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  std::string n = absl::AsciiStrToLower(std::string(name));
  if (n == "debug") return LogLevel::kDebug;
  if (n == "info") return LogLevel::kInfo;
  if (n == "warning" || n == "warn") return LogLevel::kWarning;
  if (n == "error") return LogLevel::kError;
  return absl::InvalidArgumentError("log_level must be one of debug, info, warning, error; got '" +
                                    std::string(name) + "'");
}

namespace internal {
LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  static constexpr char kLetters[] = {'D', 'I', 'W', 'E'};
  stream_ << Prefix(kLetters[static_cast<int>(level)], file, line);
}
LogMessage::~LogMessage() { WriteLine(stream_.str()); }

CheckFailure::CheckFailure(const char* file, int line, const char* expr) {
  stream_ << Prefix('F', file, line) << "Check failed: " << expr << " ";
}
CheckFailure::~CheckFailure() {
  WriteLine(stream_.str());
  std::abort();
}
}  // namespace internal
}  // namespace kvc
