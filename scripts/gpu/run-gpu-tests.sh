#!/usr/bin/env bash
# Runs ON the GPU machine, in a tree where scripts/gpu/prepare.sh packed binaries into DEVICE_DIR
# (the first argument; default .device):
#   1. environment report (GPU, driver, that every packed binary resolves its libraries);
#   2. every packed GPU test (DEVICE_DIR/bin/*_test; each exits 77 without a GPU);
#   3. `kvblock bench ttft $KVBLOCK_BENCH_ARGS` (or DEVICE_DIR/bin/ttft_bench, the same benchmark
#      linked standalone) if KVBLOCK_BENCH_ARGS is set (e.g. "--runs 10");
#   4. the Hugging Face baseline (DEVICE_DIR/tools/bench_hf_ttft.py) if KVBLOCK_HF=1;
#   5. the storage and cluster benchmarks on this quiet host if KVBLOCK_HOST_BENCH=1;
#   6. compute-sanitizer memcheck of the cuda_kernels_test cases KVBLOCK_MEMCHECK names (a gtest
#      filter, e.g. 'CudaAttention.*') if it is set.
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu-out. Exit status: the
# number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
dev="${1:-.device}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
failed=0

# The machine brings its own CUDA runtime and cuBLAS (pack.sh leaves them out).
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -e "$d/libcublas.so.13" ]; then cuda_lib="$d"; break; fi
done
if [ -z "$cuda_lib" ]; then
  cuda_lib="$(dirname "$(find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")"
fi
libdir="$PWD/$dev/lib"
if [ -e "$dev"/lib.tar.xz ]; then  # prepare.sh ships the libraries compressed
  libdir=/tmp/kvblock-device-lib
  mkdir -p "$libdir" && tar -C "$libdir" --strip-components=1 -xJf "$dev"/lib.tar.xz
fi
export LD_LIBRARY_PATH="$libdir:${cuda_lib}:${LD_LIBRARY_PATH:-}"
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  uname -r
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "cuda libs: $cuda_lib"
  for b in "$dev"/bin/*; do
    if ldd "$b" | grep -q "not found"; then echo "MISSING LIBS for $b:"; ldd "$b" | grep "not found"; fi
  done
} 2>&1 | tee "$out/env.log"

# Fixtures for the engine test: the packed copy of ../shared/fixtures plus the repository's own.
export KVBLOCK_TEST_FIXTURES="$PWD/$dev/fixtures:$PWD/tests/fixtures"
for t in "$dev"/bin/*_test; do
  [ -e "$t" ] || continue
  name="$(basename "$t")"
  echo "=== $name"
  "$t" --gtest_color=no 2>&1 | tee "$out/$name.log" | grep -E "^\[  (FAILED|  OK|PASSED)|^  |rel err|Failure|Expected|Which is|error" | head -200
  rc=${PIPESTATUS[0]}
  echo "=== $name exit $rc"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
done

# The benchmark: `kvblock bench ttft`, or the standalone ttft_bench (same code, fewer libraries).
bench="$dev"/bin/kvblock
[ -x "$bench" ] || bench="$dev"/bin/ttft_bench
if [ -x "$bench" ] && [ -n "${KVBLOCK_BENCH_ARGS:-}" ]; then
  echo "=== $(basename "$bench") bench ttft $KVBLOCK_BENCH_ARGS"
  # shellcheck disable=SC2086
  "$bench" bench ttft $KVBLOCK_BENCH_ARGS --json "$out/bench_ttft.json" 2>&1 | tee "$out/bench_ttft.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
fi

if [ "${KVBLOCK_HF:-0}" = 1 ] && [ -e "$dev"/tools/bench_hf_ttft.py ]; then
  echo "=== Hugging Face baseline"
  PYTHONUNBUFFERED=1 python3 "$dev"/tools/bench_hf_ttft.py "$out/hf_ttft.json" 2>&1 | grep -v Warning | tee "$out/hf.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
fi
if [ "${KVBLOCK_HOST_BENCH:-0}" = 1 ] && [ -x "$dev"/bin/storage_bench ]; then
  echo "=== storage_bench (RocksDB tier and plain file; memory tier and memcpy)"
  "$dev"/bin/storage_bench --benchmark_filter='Memcpy|MemoryTierGetRead|File|Rocks' \
    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true 2>&1 | tee "$out/storage_bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
  echo "=== cluster_bench (UCX and gRPC vs memcpy, one cache-server process)"
  "$dev"/bin/cluster_bench --seconds 1 --kvblock "$dev"/bin/kvblock 2>&1 | tee "$out/cluster_bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
fi
if [ -n "${KVBLOCK_MEMCHECK:-}" ] && [ -x "$dev"/bin/cuda_kernels_test ]; then
  sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  echo "=== compute-sanitizer memcheck: cuda_kernels_test --gtest_filter=$KVBLOCK_MEMCHECK"
  "$sanitizer" --tool memcheck --error-exitcode 1 "$dev"/bin/cuda_kernels_test --gtest_color=no \
    --gtest_filter="$KVBLOCK_MEMCHECK" 2>&1 | tee "$out/memcheck.log" | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
fi
echo "run-gpu-tests: $failed failed step(s)"
exit "$failed"
