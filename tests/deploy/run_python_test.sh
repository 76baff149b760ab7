#!/usr/bin/env bash
# ctest entry of the deploy tests that need PyPI packages (PyYAML, kubernetes-validate): prepares
# the project's virtualenv (scripts/python-env.sh, tests/python/requirements.txt), then runs
# tests/deploy/SCRIPT with the remaining arguments. Exits 77 (ctest SKIP) only when PyPI is
# unreachable; any other setup failure fails the test.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
script="$1"; shift
bash "$root/scripts/python-env.sh"
rc=$?
if [ "$rc" -eq 77 ]; then
  echo "SKIP: PyPI is unreachable, so PyYAML and kubernetes-validate cannot be installed"
  exit 77
fi
if [ "$rc" -ne 0 ]; then
  echo "FAIL: scripts/python-env.sh exited with $rc"
  exit 1
fi
exec "${KVBLOCK_VENV:-$root/.venv}/bin/python" "$root/tests/deploy/$script" "$@"
