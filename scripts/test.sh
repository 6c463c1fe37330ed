#!/usr/bin/env bash
# Set up (venv, package, test extras, headless Chromium when possible) and run the tests.
#   scripts/test.sh [PYTEST ARGS]          all modules, each in its own Python process (what CI runs)
#   scripts/test.sh --quick [PYTEST ARGS]  the quick subset in one process: every test not marked slow
#   scripts/test.sh tests/test_zoo.py      a selection, in one process
# With CI=true a missing ../shared (the real weights and data) is an error, not a reason to skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = true ] && [ ! -d "${RESNETKIT_SHARED:-../shared}" ]; then
  echo "error: ${RESNETKIT_SHARED:-../shared} is missing; CI runs the tests on the real weights and data there." >&2
  exit 1
fi
scripts/setup.sh dev
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1  # a crash prints every thread's stack, and no output is lost
if [ "${1:-}" = --quick ]; then
  shift
  exec .venv/bin/python -m pytest -m "not slow" "$@"
fi
for arg in "$@"; do
  case "$arg" in tests/*|*.py|*::*) exec .venv/bin/python -m pytest "$@" ;; esac
done

# The suite drives PyTorch, ONNX Runtime and OpenVINO, whose native thread pools would otherwise
# pile up in one long process: each module gets a process of its own.
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
status=0
for module in tests/test_*.py; do
  name=$(basename "$module" .py)
  code=0
  .venv/bin/python -m pytest "$module" --junitxml="$reports/$name.xml" "$@" || code=$?
  [ "$code" -le 128 ] || echo "error: $module: the Python process died by signal $((code - 128))" >&2
  [ "$code" -eq 0 ] || [ "$code" -eq 5 ] || status=1  # 5: every test of the module deselected
done
.venv/bin/python - "$reports" <<'EOF'
import sys, pathlib, xml.etree.ElementTree as ET
totals = dict(tests=0, failures=0, errors=0, skipped=0)
for report in pathlib.Path(sys.argv[1]).glob("*.xml"):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"total: {passed} passed, {failed} failed, {totals['skipped']} skipped")
EOF
exit "$status"
