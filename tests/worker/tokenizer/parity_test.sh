#!/usr/bin/env bash
# ctest entry of the tokenizer parity test: prepares the project's Python environment
# (scripts/python-env.sh installs the pinned Hugging Face `tokenizers`), then runs parity_test.py.
# Exits 77 (ctest SKIP) only when PyPI is unreachable; any other setup failure fails the test.
set -uo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bash "$root/scripts/python-env.sh"
rc=$?
if [ "$rc" -eq 77 ]; then
  echo "SKIP: PyPI is unreachable, so the reference Hugging Face tokenizers library cannot be installed"
  exit 77
fi
if [ "$rc" -ne 0 ]; then
  echo "FAIL: scripts/python-env.sh exited with $rc"
  exit 1
fi
exec "${KVBLOCK_VENV:-$root/.venv}/bin/python" "$root/tests/worker/tokenizer/parity_test.py" "$@"
