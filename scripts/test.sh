#!/usr/bin/env bash
# The one test command (README, CI): installs what is missing, builds everything, and runs every
# suite. Builds:
#   build/       the full project (g++, CUDA compiled where nvcc exists) and its ctest suites
#   build-fuzz/  cache/ with clang + libFuzzer/ASan/UBSan; each fuzzer runs for a bounded time
#   build-tsan/  cache/ with clang + ThreadSanitizer; runs the tests labelled tsan
# Environment: KVBLOCK_FUZZ_SECONDS (default 30), KVBLOCK_JOBS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
jobs="${KVBLOCK_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/kvblock-ccache}"
# Paths relative to the checkout, so any clone of the repo hits the same cache entries.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1

configure_build() {  # DIR [cmake args...]
  local dir="$1"; shift
  cmake -S . -B "$dir" -G Ninja "$@" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir" -j "$jobs"
}

mkdir -p build build-fuzz
configure_build build-fuzz -DKVBLOCK_CORE_ONLY=ON -DKVBLOCK_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DKVBLOCK_FUZZ_SECONDS="${KVBLOCK_FUZZ_SECONDS:-30}"
configure_build build
ctest --test-dir build-fuzz --output-on-failure -j "$jobs"
# ThreadSanitizer: only the storage concurrency tests (label tsan) are built and run.
mkdir -p build-tsan
cmake -S . -B build-tsan -G Ninja -DKVBLOCK_CORE_ONLY=ON -DKVBLOCK_BUILD_BENCH=OFF \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread \
  >build-tsan.configure.log 2>&1 || { cat build-tsan.configure.log; exit 1; }
cmake --build build-tsan -j "$jobs" --target store_stress_test host_buffer_pool_test
ctest --test-dir build-tsan -L tsan --output-on-failure
# The full suite runs last so its summary is the run's closing line.
ctest --test-dir build --output-on-failure -j "$jobs"
