# kvc_sampling_cuda: next-token sampling on the device (kernels/include/kvc/kernels/sampling.h).
# sampling.cc (host compiler) validates; sampling.cu holds the kernel and never includes Abseil.
kvc_cc_library(
  NAME kvc_sampling_cuda
  SRCS ${CMAKE_CURRENT_LIST_DIR}/sampling.cc
       ${CMAKE_CURRENT_LIST_DIR}/sampling.cu
  HDRS ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/sampling.h
       ${CMAKE_SOURCE_DIR}/kernels/include/kvc/kernels/sampling_params.h
       ${CMAKE_CURRENT_LIST_DIR}/sampling_launch.h
  DEPS kvc_common absl::status absl::strings CUDA::cudart)
set_target_properties(kvc_sampling_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(kvc_sampling_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xptxas=-warn-spills>)
