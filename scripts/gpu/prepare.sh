#!/usr/bin/env bash
# Builds the GPU binaries on this machine and packs them (with their shared libraries and the
# Hugging Face baseline script) into OUT_DIR for the GPU machine; then, through the device tool:
#   run(command="bash scripts/gpu/run-gpu-tests.sh OUT_DIR", carry=["OUT_DIR"])
# usage: scripts/gpu/prepare.sh [BUILD_DIR [OUT_DIR]]   (defaults build-gpu, .device; OUT_DIR is
#        relative to the repository root, e.g. .dev-NAME to pack from a worktree into /work/main)
# Environment: KVBLOCK_SHARED_DIR (default ../shared), KVBLOCK_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build-gpu}"
export KVBLOCK_DEVICE_DIR="${2:-.device}"
dev="$KVBLOCK_DEVICE_DIR"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/kvblock-ccache}"
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja >/dev/null
# The GPU tests and kvblock, plus the storage and cluster benchmarks, which the GPU machine (16
# otherwise idle cores, unlike the shared development VM) runs as a quiet-host measurement.
targets=(cuda_kernels_test cuda_engine_test cuda_backend_test pinned_memory_test kvblock storage_bench
         cluster_bench)
bins=(tests/kernels/cuda/cuda_kernels_test tests/worker/engine/cuda/cuda_engine_test
      tests/worker/engine/cuda/cuda_backend_test tests/worker/engine/cuda/pinned_memory_test kvblock
      tests/bench/storage/storage_bench tests/bench/cluster/cluster_bench)
cmake --build "$build" -j "${KVBLOCK_JOBS:-2}" --target "${targets[@]}"
bash scripts/gpu/pack.sh "$build" "${bins[@]}"
shared="${KVBLOCK_SHARED_DIR:-../shared}"
if [ -e "$shared/tools/bench_hf_ttft.py" ]; then
  mkdir -p "$dev/tools"
  cp "$shared/tools/bench_hf_ttft.py" "$dev/tools/"
fi
# The golden fixtures outside the repository (../shared does not travel to the GPU machine).
if [ -d "$shared/fixtures" ]; then
  mkdir -p "$dev/fixtures"
  cp -r "$shared"/fixtures/*/ "$dev/fixtures/"
fi
# The device tool carries at most 64 MiB: ship the libraries compressed (run-gpu-tests.sh unpacks).
tar -C "$dev" -cJf "$dev/lib.tar.xz" lib && rm -rf "$dev/lib"
du -sh "$dev"
