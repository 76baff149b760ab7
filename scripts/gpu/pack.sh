#!/usr/bin/env bash
# Packs built binaries and the shared libraries they need (the GPU machine has CUDA but no gRPC,
# RocksDB, UCX, ...) into .device/ so the device tool can carry them.
# usage: scripts/gpu/pack.sh BUILD_DIR BINARY...   (binary paths relative to BUILD_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="$1"; shift
out=.device
rm -rf "$out"; mkdir -p "$out/bin" "$out/lib"
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
# Libraries the GPU machine provides itself (its own glibc, libstdc++ and CUDA driver/toolkit).
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnvidia)'
for b in "$@"; do
  cp "$build/$b" "$out/bin/"
  # Debug info would push the carried tree past the device tool's 64 MiB.
  strip --strip-debug "$out/bin/$(basename "$b")"
  ldd "$build/$b" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -nL "$path" "$out/lib/" 2>/dev/null || true
  done
done
chmod u+w "$out"/lib/* 2>/dev/null || true
strip --strip-debug "$out"/lib/* 2>/dev/null || true
du -sh "$out"
