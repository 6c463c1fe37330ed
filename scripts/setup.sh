#!/usr/bin/env bash
# Create .venv (once) and install resnetkit into it; idempotent. Usage: scripts/setup.sh [EXTRA]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extra=${1:-}
spec="."; [ -n "$extra" ] && spec=".[$extra]"
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extra:-base}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e "$spec" 2>&1 | grep -vE "is ignored|^\s*$" || true
  .venv/bin/python -c "import resnetkit" && touch "$stamp"
fi
