# Tensor parallelism (CPU part): the Communicator interface and its in-process implementation,
# the distributed KV-Compress planner, and the tensor-parallel CPU executor.
# Included from worker/CMakeLists.txt (and, guarded, from tests/unit/worker/tp_tests.cmake).
include_guard(GLOBAL)
kvc_cc_library(
  NAME kvc_communicator
  SRCS ${CMAKE_CURRENT_LIST_DIR}/communicator.cc
  HDRS ${CMAKE_CURRENT_LIST_DIR}/communicator.h
  DEPS kvc_common absl::status absl::statusor absl::strings Threads::Threads)
kvc_cc_library(
  NAME kvc_tp_eviction
  SRCS ${CMAKE_CURRENT_LIST_DIR}/tp_eviction.cc
  HDRS ${CMAKE_CURRENT_LIST_DIR}/tp_eviction.h
  DEPS kvc_communicator kvc_kvmanager kvc_common absl::status absl::statusor absl::strings)
kvc_cc_library(
  NAME kvc_tp_cpu_executor
  SRCS ${CMAKE_CURRENT_LIST_DIR}/tp_cpu_executor.cc
  HDRS ${CMAKE_CURRENT_LIST_DIR}/tp_cpu_executor.h ${CMAKE_CURRENT_LIST_DIR}/executor.h
  DEPS kvc_executor kvc_tp_eviction kvc_communicator kvc_common kvc_model kvc_kernels_cpu kvc_kvmanager
       absl::status absl::statusor absl::strings Threads::Threads)
