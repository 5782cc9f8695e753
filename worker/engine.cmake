# Engine (continuous batching loop) and the worker's gRPC services.
kvc_cc_library(
  NAME kvc_engine
  SRCS engine.cc
  HDRS engine.h executor.h
  DEPS kvc_common kvc_model kvc_kvmanager kvc_compression_policy kvc_sampling_cpu
       absl::synchronization absl::time)

include(${CMAKE_SOURCE_DIR}/kvmanager/service.cmake)

kvc_cc_library(
  NAME kvc_worker_service
  SRCS worker_service.cc
  HDRS worker_service.h
  DEPS kvc_engine kvc_proto kvc_proto_validate kvc_grpc_common kvc_compression_policy)

kvc_cc_binary(
  NAME kvc-worker
  SRCS main.cc
  DEPS kvc_worker_service kvc_kvmanager_service kvc_cpu_executor kvc_tp_cpu_executor kvc_model kvc_grpc_server
       absl::flags absl::flags_parse)
if(KVC_CUDA_ENABLED)
  target_link_libraries(kvc-worker PRIVATE kvc_kernels_cuda)
else()
  target_sources(kvc-worker PRIVATE ${CMAKE_SOURCE_DIR}/kernels/cpu/no_cuda_device_info.cc)
endif()
