# kvc_cuda_executor: the CUDA backend of Executor (bf16 weights and KV cache, cuBLASLt GEMMs, the
# kvc CUDA kernels). Built only when KVC_CUDA_ENABLED. The executor's helper kernels (row gather,
# KV slot moves: kernels/include/kvc/kernels/executor_ops.h) are their own small library so that
# kvc_kernels_cuda stays as its owner made it.
if(NOT KVC_CUDA_ENABLED)
  return()
endif()

kvc_cc_library(
  NAME kvc_executor_ops_cuda
  SRCS ${CMAKE_SOURCE_DIR}/kernels/cuda/executor_ops.cc
       ${CMAKE_SOURCE_DIR}/kernels/cuda/executor_ops.cu
  HDRS ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/executor_ops.h
       ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/executor_ops_params.h
       ${CMAKE_SOURCE_DIR}/kernels/cuda/executor_ops_launch.h
  DEPS kvc_common absl::status absl::strings CUDA::cudart)
set_target_properties(kvc_executor_ops_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(kvc_executor_ops_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xptxas=-warn-spills>)

kvc_cc_library(
  NAME kvc_cuda_executor
  SRCS cuda_executor.cc cuda_executor_eviction.cc cuda_executor_sampling.cc
  HDRS cuda_executor.h cuda_executor_internal.h executor.h
  DEPS kvc_executor kvc_common kvc_model kvc_kernels_cpu kvc_kvmanager kvc_kernels_cuda kvc_executor_ops_cuda kvc_sampling_cuda kvc_eviction_cuda kvc_sampling_cpu
       absl::status absl::statusor absl::strings CUDA::cudart CUDA::cublasLt)

# kvc-worker (engine.cmake) serves --backend=cuda when this library is built.
if(TARGET kvc-worker)
  target_link_libraries(kvc-worker PRIVATE kvc_cuda_executor)
  target_compile_definitions(kvc-worker PRIVATE KVC_HAS_CUDA_EXECUTOR=1)
endif()
