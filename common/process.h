// Process helpers shared by kvc-router and kvc-worker: flag-driven logging setup, shutdown on
// SIGINT/SIGTERM, and a "ready file" that tells supervisors/tests which ports were bound.
#ifndef KVC_COMMON_PROCESS_H_
#define KVC_COMMON_PROCESS_H_

#include <map>
#include <string>

#include "absl/status/status.h"

namespace kvc {

// Blocks SIGINT and SIGTERM in the calling thread (call first in main(), before any thread is
// started, so every thread inherits the mask).
void BlockShutdownSignals();
// Waits until SIGINT or SIGTERM arrives; returns the signal number.
int WaitForShutdownSignal();

// Atomically writes `values` as a flat JSON object to `path` (write to a temp file + rename).
absl::Status WriteReadyFile(const std::string& path,
                            const std::map<std::string, std::string>& values);

// The host CPU's model name from /proc/cpuinfo ("unknown CPU" where it cannot be read), for the
// device line that every benchmark prints.
std::string HostCpuName();

}  // namespace kvc

#endif  // KVC_COMMON_PROCESS_H_
