# kvc_eviction_cuda: device-side KV-Compress selection and compaction of one sequence
# (kernels/include/kvc/kernels/eviction.h; the CPU reference is kvmanager/eviction_plan.h).
# Included at the end of kernels/cuda/CMakeLists.txt, so only in CUDA builds.
kvc_cc_library(
  NAME kvc_eviction_cuda
  SRCS eviction.cc eviction.cu
  HDRS ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/eviction.h
       ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/eviction_params.h
       eviction_launch.h
  DEPS kvc_common absl::status absl::strings CUDA::cudart)
set_target_properties(kvc_eviction_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(kvc_eviction_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xptxas=-warn-spills>)

# CudaExecutor::EvictOnDevice (worker/cuda_executor_eviction.cc) calls it. kvc_cuda_executor is
# defined in worker/, which is read after kernels/: link it once every directory has been read.
function(_kvc_link_eviction_cuda)
  if(TARGET kvc_cuda_executor)
    target_link_libraries(kvc_cuda_executor PUBLIC kvc_eviction_cuda)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _kvc_link_eviction_cuda)
