#!/usr/bin/env bash
# Builds the GPU binaries on this machine and packs them (with their shared libraries and the
# Hugging Face baseline script) into .device/ for the GPU machine; then, through the device tool:
#   run(command="bash scripts/gpu/run-gpu-tests.sh", carry=[".device"])
# usage: scripts/gpu/prepare.sh [BUILD_DIR]   (default build-gpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build-gpu}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/kvblock-ccache}"
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja >/dev/null
targets=(cuda_kernels_test)
bins=(tests/kernels/cuda/cuda_kernels_test)
if ninja -C "$build" -t targets all 2>/dev/null | grep -q '^cuda_engine_test:'; then
  targets+=(cuda_engine_test); bins+=(tests/worker/engine/cuda/cuda_engine_test)
fi
if ninja -C "$build" -t targets all 2>/dev/null | grep -q '^kvblock:'; then
  targets+=(kvblock); bins+=(kvblock)
fi
cmake --build "$build" -j "${KVBLOCK_JOBS:-2}" --target "${targets[@]}"
bash scripts/gpu/pack.sh "$build" "${bins[@]}"
shared="${KVBLOCK_SHARED_DIR:-../shared}"
if [ -e "$shared/tools/bench_hf_ttft.py" ]; then
  mkdir -p .device/tools
  cp "$shared/tools/bench_hf_ttft.py" .device/tools/
fi
du -sh .device
