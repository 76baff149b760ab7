#!/usr/bin/env bash
# Builds the GPU binaries on this machine and packs them (with their shared libraries and the
# Hugging Face baseline script) into .device/ for the GPU machine; then, through the device tool:
#   run(command="bash scripts/gpu/run-gpu-tests.sh", carry=[".device"])
# usage: scripts/gpu/prepare.sh [BUILD_DIR]   (default build-gpu)
# Environment: KVBLOCK_SHARED_DIR (default ../shared), KVBLOCK_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build-gpu}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/kvblock-ccache}"
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja >/dev/null
targets=(cuda_kernels_test cuda_engine_test kvblock)
bins=(tests/kernels/cuda/cuda_kernels_test tests/worker/engine/cuda/cuda_engine_test kvblock)
cmake --build "$build" -j "${KVBLOCK_JOBS:-2}" --target "${targets[@]}"
bash scripts/gpu/pack.sh "$build" "${bins[@]}"
shared="${KVBLOCK_SHARED_DIR:-../shared}"
if [ -e "$shared/tools/bench_hf_ttft.py" ]; then
  mkdir -p .device/tools
  cp "$shared/tools/bench_hf_ttft.py" .device/tools/
fi
# The golden fixtures outside the repository (../shared does not travel to the GPU machine).
if [ -d "$shared/fixtures" ]; then
  mkdir -p .device/fixtures
  cp -r "$shared"/fixtures/*/ .device/fixtures/
fi
# The device tool carries at most 64 MiB: ship the libraries compressed (run-gpu-tests.sh unpacks).
tar -C .device -cJf .device/lib.tar.xz lib && rm -rf .device/lib
du -sh .device
