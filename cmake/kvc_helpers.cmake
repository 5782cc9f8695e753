# Helper functions for kvc targets (after absl_cc_library / leveldb_test).
#
#   kvc_cc_library(NAME kvc_foo SRCS a.cc HDRS a.h DEPS kvc_common absl::status)
#   kvc_cc_binary(NAME kvc-worker SRCS main.cc DEPS ...)
#   kvc_cc_test(NAME foo_test SRCS foo_test.cc DEPS kvc_foo LABELS unit [TIMEOUT 120])
#   kvc_cuda_test(...)  same, with the `gpu` label that CPU CI excludes.
#
# Source lists are explicit (no globbing). Every target gets the project warnings and the
# sanitizer flags chosen by KVC_SANITIZE.

set(KVC_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers)

if(KVC_SANITIZE)
  string(REPLACE "," ";" _kvc_sans "${KVC_SANITIZE}")
  set(KVC_SANITIZE_FLAGS "")
  foreach(_s IN LISTS _kvc_sans)
    list(APPEND KVC_SANITIZE_FLAGS "-fsanitize=${_s}")
  endforeach()
  list(APPEND KVC_SANITIZE_FLAGS -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${KVC_SANITIZE_FLAGS}>")
  add_link_options(${KVC_SANITIZE_FLAGS})
endif()

function(_kvc_target_common target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${KVC_WARNINGS}>)
endfunction()

function(kvc_cc_library)
  cmake_parse_arguments(K "" "NAME" "SRCS;HDRS;DEPS;PUBLIC_DEPS" ${ARGN})
  if(K_SRCS)
    add_library(${K_NAME} STATIC ${K_SRCS} ${K_HDRS})
    target_include_directories(${K_NAME} PUBLIC ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
    target_link_libraries(${K_NAME} PUBLIC ${K_DEPS} ${K_PUBLIC_DEPS})
    _kvc_target_common(${K_NAME})
  else()
    add_library(${K_NAME} INTERFACE)
    target_include_directories(${K_NAME} INTERFACE ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
    target_link_libraries(${K_NAME} INTERFACE ${K_DEPS} ${K_PUBLIC_DEPS})
  endif()
endfunction()

function(kvc_cc_binary)
  cmake_parse_arguments(K "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${K_NAME} ${K_SRCS})
  target_link_libraries(${K_NAME} PRIVATE ${K_DEPS})
  _kvc_target_common(${K_NAME})
endfunction()

# Tests: one gtest binary per NAME, registered with ctest under the given labels.
# Working directory is the source root, so tests can read tests/fixtures/ and models/.
function(kvc_cc_test)
  cmake_parse_arguments(K "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT KVC_BUILD_TESTS)
    return()
  endif()
  add_executable(${K_NAME} ${K_SRCS})
  target_link_libraries(${K_NAME} PRIVATE ${K_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  _kvc_target_common(${K_NAME})
  if(NOT K_LABELS)
    set(K_LABELS unit)
  endif()
  if(NOT K_TIMEOUT)
    set(K_TIMEOUT 300)
  endif()
  add_test(NAME ${K_NAME} COMMAND ${K_NAME} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${K_NAME} PROPERTIES LABELS "${K_LABELS}" TIMEOUT ${K_TIMEOUT}
    ENVIRONMENT "KVC_BIN_DIR=${CMAKE_BINARY_DIR}/bin;KVC_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endfunction()

function(kvc_cuda_test)
  cmake_parse_arguments(K "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT KVC_CUDA_ENABLED)
    return()
  endif()
  kvc_cc_test(NAME ${K_NAME} SRCS ${K_SRCS} DEPS ${K_DEPS} LABELS gpu ${K_LABELS} TIMEOUT ${K_TIMEOUT})
endfunction()
