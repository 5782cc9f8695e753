kvc_cc_test(NAME worker_engine_test SRCS engine_test.cc
            DEPS kvc_engine kvc_cpu_executor kvc_model absl::synchronization LABELS unit)
