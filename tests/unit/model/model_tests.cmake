# Tests of model/ (config.json, safetensors, weights). Run from the repo root (fixtures).
kvc_cc_test(NAME model_config_test SRCS config_test.cc DEPS kvc_model LABELS unit)
kvc_cc_test(NAME model_safetensors_test SRCS safetensors_test.cc DEPS kvc_model LABELS unit)
kvc_cc_test(NAME model_weights_test SRCS weights_test.cc DEPS kvc_model LABELS unit)
