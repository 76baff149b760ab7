# Small helpers shared by every module's CMakeLists.txt.

# kvblock_module(NAME) creates the static library kvblock_<NAME> with alias kvblock::<NAME>.
# Sources are added by the module's CMakeLists (and its subfolders) with target_sources().
function(kvblock_module name)
  add_library(kvblock_${name} STATIC)
  add_library(kvblock::${name} ALIAS kvblock_${name})
  target_include_directories(kvblock_${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/gen)
  target_compile_options(kvblock_${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

# kvblock_test(NAME SOURCES a.cc b.cc LIBS kvblock::cache [LABELS l1 l2] [TIMEOUT s])
# A gtest executable registered with ctest (one ctest entry per executable keeps the 2-core CI
# fast; gtest prints every case).
function(kvblock_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    KVBLOCK_SHARED_DIR="${KVBLOCK_SHARED_DIR}"
    KVBLOCK_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    KVBLOCK_BINARY_DIR="${PROJECT_BINARY_DIR}")
  add_test(NAME ${name} COMMAND ${name})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}")
endfunction()

# kvblock_gpu_test(NAME SOURCES a.cc LIBS kvblock::cuda_engine ...): a GPU test, labelled `gpu`,
# with tests/kernels/cuda/gpu_test_main.cc as its main, which exits 77 (ctest: skipped) where no
# CUDA device exists, as in CI. Run on a GPU machine with `ctest -L gpu` or
# scripts/gpu/run-gpu-tests.sh.
function(kvblock_gpu_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES} ${PROJECT_SOURCE_DIR}/tests/kernels/cuda/gpu_test_main.cc)
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest)
  target_compile_definitions(${name} PRIVATE
    KVBLOCK_SHARED_DIR="${KVBLOCK_SHARED_DIR}" KVBLOCK_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77 TIMEOUT 300)
endfunction()
