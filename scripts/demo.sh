#!/usr/bin/env bash
# The README's main command: installs what is missing, builds `kvblock`, runs `kvblock demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/kvblock-ccache}"
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build -G Ninja >build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
cmake --build build -j "${KVBLOCK_JOBS:-$(nproc)}" --target kvblock
exec build/kvblock demo "$@"
