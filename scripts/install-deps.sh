#!/usr/bin/env bash
# Installs every Debian package that kvblock's build and tests need. Idempotent; run as root on a
# fresh Debian 12 machine (CI does, through scripts/test.sh). Skips apt entirely when all packages
# are already present, so repeated runs cost nothing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config clang libclang-rt-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libucx-dev ucx-utils libabsl-dev libxxhash-dev nlohmann-json3-dev
  libre2-dev libutf8proc-dev libcli11-dev libcpp-httplib-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-venv python3-pip
  prometheus chromium fonts-dejavu-core
  openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
