#!/usr/bin/env bash
# Create a venv (once) and install resnetkit into it; idempotent. Usage: scripts/setup.sh [EXTRA]
# EXTRA defaults to all (every job's packages but edge) in .venv; 'dev' adds the test tools, 'core' installs no
# extra. 'edge' and 'dev-edge' go to .venv-edge: the edge converters pin typing-extensions below 4.13, which the
# rest of the stack has outgrown (VENV=DIR chooses another place).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=${1:-all}
case $extra in *edge) venv=${VENV:-.venv-edge} ;; *) venv=${VENV:-.venv} ;; esac
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
spec="."; [ "$extra" != core ] && spec=".[$extra]"
stamp="$venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extra}"
if [ ! -f "$stamp" ]; then
  # pip compiles bytecode on one core; compileall -j 0 does it on all of them (about 40 s -> 19 s on 2 cores)
  echo "setup: pip installs $spec into $venv (on a 2-core VM with the wheels on disk: about 65 s for 'all')" >&2
  "$venv/bin/python" -m pip install --quiet --no-compile -e "$spec" 2>&1 | grep -vE "is ignored|^\s*$" || true
  echo "setup: compiling the installed Python files to bytecode on every core (about 20 s there)" >&2
  "$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null 2>&1 || true
  "$venv/bin/python" -c "import resnetkit" && touch "$stamp"
fi
