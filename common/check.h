// KVC_CHECK: invariants that, when broken, mean a bug in kvc. They log file:line and the failed
// expression and abort. Bad *input* never reaches a CHECK: it returns an absl::Status instead.
//
//   KVC_CHECK(cond) << "extra context";
//   KVC_CHECK_EQ(a, b); KVC_CHECK_LT(a, b); ...
//   KVC_DCHECK(cond)   compiled out unless !NDEBUG.
#ifndef KVC_COMMON_CHECK_H_
#define KVC_COMMON_CHECK_H_

#include <sstream>
#include <string>

namespace kvc::internal {

// Collects the message of a failed check and aborts in its destructor.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* expr);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Swallows the stream expression when the check passes (glog's voidify trick).
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace kvc::internal

#define KVC_CHECK(cond)                 \
  (cond) ? (void)0                      \
         : ::kvc::internal::Voidify() & \
               ::kvc::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define KVC_CHECK_OP_(a, op, b) KVC_CHECK((a)op(b)) << "(" << (a) << " vs " << (b) << ") "
#define KVC_CHECK_EQ(a, b) KVC_CHECK_OP_(a, ==, b)
#define KVC_CHECK_NE(a, b) KVC_CHECK_OP_(a, !=, b)
#define KVC_CHECK_LT(a, b) KVC_CHECK_OP_(a, <, b)
#define KVC_CHECK_LE(a, b) KVC_CHECK_OP_(a, <=, b)
#define KVC_CHECK_GT(a, b) KVC_CHECK_OP_(a, >, b)
#define KVC_CHECK_GE(a, b) KVC_CHECK_OP_(a, >=, b)
#define KVC_CHECK_OK(expr)                                  \
  do {                                                      \
    const auto& kvc_check_status_ = (expr);                 \
    KVC_CHECK(kvc_check_status_.ok()) << kvc_check_status_; \
  } while (0)

#ifdef NDEBUG
#define KVC_DCHECK(cond) \
  while (false) KVC_CHECK(cond)
#else
#define KVC_DCHECK(cond) KVC_CHECK(cond)
#endif

#endif  // KVC_COMMON_CHECK_H_
