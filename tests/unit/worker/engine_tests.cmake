kvc_cc_test(NAME worker_engine_test SRCS engine_test.cc
            DEPS kvc_engine kvc_cpu_executor kvc_model absl::synchronization LABELS unit)
kvc_cc_test(NAME worker_compression_test SRCS compression_test.cc
            DEPS kvc_engine kvc_cpu_executor kvc_model kvc_compression_policy LABELS unit)
kvc_cc_test(NAME worker_engine_compression_test SRCS engine_compression_test.cc
            DEPS kvc_engine kvc_cpu_executor kvc_model LABELS unit)
kvc_cc_test(NAME worker_refmodel_parity_test SRCS refmodel_parity_test.cc
            DEPS kvc_cpu_executor kvc_model kvc_tokenizer kvc_sampling_cpu LABELS unit)
kvc_cc_test(NAME worker_engine_device_paths_test SRCS engine_device_paths_test.cc
            DEPS kvc_engine kvc_cpu_executor kvc_model kvc_kvmanager kvc_sampling_cpu LABELS unit)
