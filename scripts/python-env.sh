#!/usr/bin/env bash
# Creates or updates the project's Python virtual environment (.venv/ at the repo root, or
# $KVBLOCK_VENV) from tests/python/requirements.txt, with whichever python3 is on PATH (Debian's or
# pyenv's). Cached: when the venv's interpreter works and the requirements file is unchanged since
# the last successful install, it returns at once. Safe to run concurrently (one flock).
# Exit codes: 0 ready (prints nothing), 77 PyPI unreachable (tests that need it skip), 1 failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KVBLOCK_VENV:-$root/.venv}"
req="$root/tests/python/requirements.txt"
python="${KVBLOCK_PYTHON:-python3}"
stamp="$venv/.kvblock-requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
ready() {
  [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
    "$venv/bin/python" -c 'import sys' >/dev/null 2>&1
}
ready && exit 0

mkdir -p "$root/.cache"
exec 9>"$root/.cache/python-env.lock"
flock -w 900 9 || { echo "python-env: timed out waiting for $root/.cache/python-env.lock" >&2; exit 1; }
ready && exit 0  # another process finished the install while this one waited

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  "$python" -m venv --clear "$venv" >/dev/null || {
    echo "python-env: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
rm -f "$stamp"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout 1200 "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >"$log" 2>&1; then
  echo "$want" >"$stamp"
  exit 0
fi
# Tell "PyPI unreachable" (77: callers skip) from a real failure (1: callers fail).
if "$venv/bin/python" - <<'PY'
import os, subprocess, sys, urllib.request
url = os.environ.get("PIP_INDEX_URL")
if not url:
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                       capture_output=True, text=True)
    url = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "https://pypi.org/simple/"
try:
    urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=20).read(1)
except Exception:
    sys.exit(1)
PY
then
  echo "python-env: pip install -r $req failed:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
echo "python-env: PyPI is unreachable; cannot install $req" >&2
exit 77
