#!/usr/bin/env bash
# Create a venv (once) and install resnetkit into it; idempotent. Usage: scripts/setup.sh [EXTRA]
# EXTRA defaults to all (every job's packages but edge) in .venv; 'dev' adds the test tools, 'core' installs no
# extra. 'edge' and 'dev-edge' go to .venv-edge: the edge converters pin typing-extensions below 4.13, which the
# rest of the stack has outgrown (VENV=DIR chooses another place).
# The installer is uv (on PATH, else pip installs it into the venv): it unpacks wheels and compiles bytecode on
# every core, where pip takes one wheel at a time. Without uv (pip cannot fetch it), pip installs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=${1:-all}
case $extra in *edge) venv=${VENV:-.venv-edge} ;; *) venv=${VENV:-.venv} ;; esac
# without pip (3.5 s less): uv installs it beside the rest, or ensurepip when pip does the installing
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv --without-pip "$venv"
spec="."; [ "$extra" != core ] && spec=".[$extra]"
stamp="$venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extra}"
[ -f "$stamp" ] && exit 0

tools="$venv/.setup-tools"  # where pip puts uv when it is not on PATH
uv=$(command -v uv || command -v "$tools/bin/uv" || true)
if [ -z "$uv" ] && "$PYTHON" -m pip install --quiet --target "$tools" uv >/dev/null 2>&1; then uv="$tools/bin/uv"; fi
if [ -n "$uv" ]; then
  echo "setup: uv installs $spec into $venv and compiles its bytecode (on a 2-core VM with the wheels on disk:" \
       "about 20 s for the main job's 'backends', 40 s for 'all')" >&2
  mapfile -t sources < <("$PYTHON" scripts/pip_sources.py)  # pip's indexes, wheel folders, constraints
  # unsafe-first-match: a package's versions on the first index that has it (a local mirror of pip's) first, then
  # the next index's; pip treats every index alike, and uv's default would stop at the first index's versions
  "$uv" pip install --quiet --compile-bytecode --index-strategy unsafe-first-match --python "$venv/bin/python" \
    "${sources[@]}" -e "$spec" pip
else
  echo "setup: uv unavailable (pip could not install it); pip installs $spec into $venv (about 65 s for 'all')" >&2
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip --upgrade >/dev/null
  "$venv/bin/python" -m pip install --quiet --no-compile -e "$spec" 2>&1 | grep -vE "is ignored|^\s*$" || true
  # pip compiles bytecode on one core; compileall -j 0 does it on all of them (about 40 s -> 19 s on 2 cores)
  echo "setup: compiling the installed Python files to bytecode on every core (about 20 s there)" >&2
  "$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null 2>&1 || true
fi
"$venv/bin/python" -c "import resnetkit" && touch "$stamp"
