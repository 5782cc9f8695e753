# Tests of tensor parallelism on the CPU: the in-process communicator, the distributed
# KV-Compress planner, the tensor-parallel CPU executor (vs the single-rank CpuExecutor) and the
# engine on top of it. Included from tests/unit/worker/CMakeLists.txt.
include_guard(GLOBAL)
include(${CMAKE_SOURCE_DIR}/worker/tp.cmake)  # no-op when worker/CMakeLists.txt included it
kvc_cc_test(NAME worker_communicator_test
            SRCS ${CMAKE_CURRENT_LIST_DIR}/communicator_test.cc
            DEPS kvc_communicator LABELS unit)
kvc_cc_test(NAME worker_tp_eviction_test
            SRCS ${CMAKE_CURRENT_LIST_DIR}/tp_eviction_test.cc
            DEPS kvc_tp_eviction kvc_kvmanager LABELS unit)
kvc_cc_test(NAME worker_tp_cpu_executor_test
            SRCS ${CMAKE_CURRENT_LIST_DIR}/tp_cpu_executor_test.cc
            DEPS kvc_tp_cpu_executor kvc_cpu_executor kvc_kvmanager kvc_compression_policy
                 kvc_model LABELS unit)
kvc_cc_test(NAME worker_tp_engine_test
            SRCS ${CMAKE_CURRENT_LIST_DIR}/tp_engine_test.cc
            DEPS kvc_tp_cpu_executor kvc_cpu_executor kvc_engine kvc_model LABELS unit)
