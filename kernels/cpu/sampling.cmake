# CPU sampling (temperature / top-k / top-p / greedy) and the per-request RNG.
kvc_cc_library(
  NAME kvc_sampling_cpu
  SRCS ${CMAKE_CURRENT_LIST_DIR}/sampling.cc
  HDRS ${CMAKE_CURRENT_LIST_DIR}/sampling.h
  DEPS kvc_common absl::status absl::strings)
