# kvc_executor: the Executor interface and the batch validation every executor shares.
kvc_cc_library(
  NAME kvc_executor
  SRCS executor.cc
  HDRS executor.h
  DEPS kvc_common kvc_model kvc_kvmanager kvc_kernels_cpu kvc_sampling_cpu absl::status absl::statusor absl::strings)
# kvc_cpu_executor: the fp32 CPU backend of Executor (reference implementation).
kvc_cc_library(
  NAME kvc_cpu_executor
  SRCS cpu_executor.cc
  HDRS cpu_executor.h executor.h
  DEPS kvc_executor kvc_common kvc_model kvc_kernels_cpu kvc_kvmanager absl::status absl::statusor absl::strings)
