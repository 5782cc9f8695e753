# kvc_model: config.json parsing (config), safetensors reading (safetensors) and Llama-family
# weights (weights). Included by model/CMakeLists.txt.
kvc_cc_library(
  NAME kvc_model
  SRCS config.cc safetensors.cc weights.cc
  HDRS config.h safetensors.h weights.h
  DEPS kvc_common nlohmann_json::nlohmann_json absl::status absl::statusor absl::strings
       absl::str_format)
