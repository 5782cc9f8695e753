# gRPC introspection service and kvc_kv_* metrics exporter of the KV-manager (glue only; the
# domain library kvc_kvmanager has no gRPC dependency).
kvc_cc_library(
  NAME kvc_kvmanager_service
  SRCS ${CMAKE_SOURCE_DIR}/kvmanager/kvmanager_service.cc
  HDRS ${CMAKE_SOURCE_DIR}/kvmanager/kvmanager_service.h
  DEPS kvc_kvmanager kvc_proto kvc_common)
