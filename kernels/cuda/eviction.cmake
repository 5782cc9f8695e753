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
