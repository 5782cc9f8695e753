# kvc_kernels_cpu: fp32 reference kernels of the model forward pass (ops.h) and paged attention
# (attention.h), on a small fork-join thread pool (thread_pool.h). simd.h is private.
kvc_cc_library(
  NAME kvc_kernels_cpu
  SRCS thread_pool.cc ops.cc attention.cc kv_scores.cc
  HDRS thread_pool.h ops.h attention.h kv_scores.h simd.h
  DEPS kvc_common Threads::Threads)
# Hot loops are explicit 8-lane vector code; -O3 and FMA contraction (used only by the
# x86-64-v3 clone) keep them fast in optimised builds. -Wno-psabi: the 32-byte vector type's ABI
# note is irrelevant (all such functions are inlined).
target_compile_options(kvc_kernels_cpu PRIVATE
  $<$<NOT:$<CONFIG:Debug>>:-O3> -ffp-contract=fast -Wno-psabi)
