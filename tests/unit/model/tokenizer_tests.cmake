# Tests of the tokenizer library (model/tokenizer*). The golden test needs the real tokenizers in
# .cache/tokenizers (scripts/fetch-test-data, called by scripts/install-deps).
kvc_cc_test(
  NAME tokenizer_test
  SRCS tokenizer_test.cc
  DEPS kvc_tokenizer nlohmann_json::nlohmann_json
  LABELS unit)
kvc_cc_test(
  NAME tokenizer_golden_test
  SRCS tokenizer_golden_test.cc
  DEPS kvc_tokenizer nlohmann_json::nlohmann_json
  LABELS unit
  TIMEOUT 600)
