// Test helper: runs kvc binaries as real child processes (fork/exec) with their output in a log
// file, waits for their --ready_file, and stops them (SIGTERM, then SIGKILL) on destruction.
#ifndef KVC_TESTS_E2E_PROCESS_H_
#define KVC_TESTS_E2E_PROCESS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvc::testing {

// Directory of the built binaries ($KVC_BIN_DIR, set by ctest) and of the source tree.
std::string BinDir();
std::string SourceDir();
// A fresh temporary directory.
std::string MakeTempDir(const std::string& prefix);

class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  // Stops the process this one held (if any) and takes over `other`'s.
  ChildProcess& operator=(ChildProcess&& other) noexcept;

  // Starts `argv[0]` with the rest as arguments; stdout+stderr go to `log_path`.
  static absl::StatusOr<ChildProcess> Start(std::vector<std::string> argv,
                                            const std::string& log_path);
  // Waits for the ready file to hold a JSON object; returns its key -> value map.
  absl::StatusOr<std::map<std::string, std::string>> WaitReady(const std::string& ready_file,
                                                               absl::Duration timeout);
  // Waits for the process to exit by itself; returns its exit code (or -signal).
  absl::StatusOr<int> WaitExit(absl::Duration timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code.
  int Stop(absl::Duration grace = absl::Seconds(10));
  void Kill();  // SIGKILL now (a crash)
  bool running() const { return pid_ > 0; }
  int pid() const { return pid_; }
  std::string Log() const;

 private:
  int pid_ = -1;
  std::string log_path_;
};

// Reads a whole file.
std::string ReadFile(const std::string& path);

}  // namespace kvc::testing

#endif  // KVC_TESTS_E2E_PROCESS_H_
