# Tests of the CPU reference kernels (kernels/cpu/ops.cmake).
kvc_cc_test(NAME kernels_cpu_ops_test SRCS ops_test.cc DEPS kvc_kernels_cpu LABELS unit)
kvc_cc_test(NAME kernels_cpu_attention_test SRCS attention_test.cc DEPS kvc_kernels_cpu
            LABELS unit)
