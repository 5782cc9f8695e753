#include "common/process.h"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvc {

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

absl::Status WriteReadyFile(const std::string& path,
                            const std::map<std::string, std::string>& values) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
    f << "{";
    bool first = true;
    for (const auto& [k, v] : values) {
      f << (first ? "" : ", ") << "\"" << k << "\": \"" << v << "\"";
      first = false;
    }
    f << "}\n";
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

std::string HostCpuName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

}  // namespace kvc
