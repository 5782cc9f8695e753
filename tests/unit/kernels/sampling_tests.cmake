# Tests of kernels/cpu/sampling (SampleToken, Rng).
kvc_cc_test(NAME kernels_sampling_test SRCS ${CMAKE_CURRENT_LIST_DIR}/sampling_test.cc
            DEPS kvc_sampling_cpu LABELS unit)
