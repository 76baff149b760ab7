#!/usr/bin/env bash
# Packs built binaries and the shared libraries they need (the GPU machine has CUDA but no gRPC,
# RocksDB, UCX, ...) into OUT_DIR (default .device/) so the device tool can carry them.
# usage: KVBLOCK_DEVICE_DIR=OUT_DIR scripts/gpu/pack.sh BUILD_DIR BINARY...
#        (binary paths relative to BUILD_DIR; OUT_DIR relative to the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="$1"; shift
out="${KVBLOCK_DEVICE_DIR:-.device}"
rm -rf "$out"; mkdir -p "$out/bin" "$out/lib"
if [ -d .git ]; then  # a worktree's .git is a file: its excludes live in the main checkout
  grep -qx "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> .git/info/exclude
fi
# Libraries the GPU machine provides itself (its own glibc, libstdc++ and CUDA driver/toolkit).
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnvidia)'
for b in "$@"; do
  cp "$build/$b" "$out/bin/"
  # Debug info would push the carried tree past the device tool's 64 MiB.
  strip --strip-debug "$out/bin/$(basename "$b")"
  ldd "$build/$b" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -nL "$path" "$out/lib/" 2>/dev/null || true
    # UCX loads its transports (shared memory, CMA, TCP) as modules from <libucs's dir>/ucx/.
    if [[ "$name" =~ ^libucs\. ]] && [ -d "$(dirname "$path")/ucx" ] && [ ! -d "$out/lib/ucx" ]; then
      mkdir -p "$out/lib/ucx" && cp -L "$(dirname "$path")"/ucx/*.so.0 "$(dirname "$path")"/ucx/*.so "$out/lib/ucx/"
    fi
  done
done
chmod u+w "$out"/lib/* 2>/dev/null || true
strip --strip-debug "$out"/lib/* 2>/dev/null || true
du -sh "$out"
