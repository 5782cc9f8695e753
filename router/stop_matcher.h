// StopMatcher: finds stop strings in streamed text. Text is fed in deltas (whole UTF-8
// characters); the matcher releases only text that can no longer be the start of a stop string,
// and on a match releases the text before it and reports the stop. The stop string itself is
// never released. Not thread-safe (one per request).
#ifndef KVC_ROUTER_STOP_MATCHER_H_
#define KVC_ROUTER_STOP_MATCHER_H_

#include <string>
#include <vector>

namespace kvc {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Feeds `delta`; appends releasable text to *out. Returns true once a stop string matched
  // (then *out holds the text before the match; further calls release nothing).
  bool Feed(const std::string& delta, std::string* out);
  // Releases whatever is held back (end of stream without a match).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace kvc

#endif  // KVC_ROUTER_STOP_MATCHER_H_
