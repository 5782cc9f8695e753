# kvc_tokenizer: Hugging Face tokenizer.json loading, encoding and (streaming) decoding.
# Included by model/CMakeLists.txt.
kvc_cc_library(
  NAME kvc_tokenizer
  SRCS tokenizer.cc tokenizer_bpe.cc tokenizer_decoder.cc tokenizer_pipeline.cc
       tokenizer_regex.cc unicode_utils.cc
  HDRS tokenizer.h tokenizer_bpe.h tokenizer_decoder.h tokenizer_json.h tokenizer_pipeline.h
       tokenizer_regex.h unicode_utils.h
  DEPS kvc_common nlohmann_json::nlohmann_json PkgConfig::PCRE2 PkgConfig::UTF8PROC
       absl::status absl::statusor absl::strings absl::str_format absl::flat_hash_map absl::flat_hash_set
       absl::hash)
