#!/usr/bin/env bash
# Set up (venv, package, test extras, headless Chromium when possible) and run the tests.
#   scripts/test.sh [PYTEST ARGS]          all modules, each in its own Python process (forked from one that
#                                          imported torch and resnetkit once), one after another; beside
#                                          them at the lowest CPU and I/O priority, tests/test_edge.py (in
#                                          .venv-edge) and the Docker image check (scripts/docker_check.sh) (what CI
#                                          runs)
#   scripts/test.sh --quick [PYTEST ARGS]  the quick subset in one process: every test not marked slow
#   scripts/test.sh tests/test_zoo.py      a selection, in one process (tests/test_edge.py: in .venv-edge)
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
  case "$arg" in
    tests/test_edge.py*) scripts/setup.sh dev-edge && exec .venv-edge/bin/python -m pytest "$@" ;;  # its own venv
    tests/*|*.py|*::*) exec .venv/bin/python -m pytest "$@" ;;
  esac
done

# The suite drives PyTorch, ONNX Runtime and OpenVINO, whose native thread pools would otherwise
# pile up in one long process: each module gets a process of its own.
reports=$(mktemp -d)
background=()
# "|| true": under set -e a failing kill (the jobs have ended) would turn the suite's exit status into 1
trap 'kill "${background[@]}" 2>/dev/null || true; rm -rf "$reports"' EXIT
export RESNETKIT_SUITE_TUNING_CACHE="$reports/tuning.json"  # auto's choices, shared by the module processes
status=0
failed_modules=()  # named again after the totals, so the end of a long log says what failed
pytest_module() {  # PYTHON MODULE [PYTEST ARGS]: one module's tests in a process of their own, with a JUnit report
  local python=$1 module=$2
  shift 2
  "$python" -m pytest "$module" --junitxml="$reports/$(basename "$module" .py).xml" --durations=5 --durations-min=20 "$@"
}
record() {  # MODULE EXIT-CODE
  [ "$2" -le 128 ] || echo "error: $1: the Python process died by signal $(($2 - 128))" >&2
  [ "$2" -eq 0 ] || [ "$2" -eq 5 ] || { status=1; failed_modules+=("$1 (exit $2)"); }  # 5: every test deselected
}
edge_tests() {  # [PYTEST ARGS]: set up .venv-edge (the edge converters pin packages the rest has outgrown), then
  # tests/test_edge.py in it; exit 99 when the set-up failed
  scripts/setup.sh dev-edge >"$reports/edge-setup.log" 2>&1 || return 99
  # a cache of its own: its library versions differ, and an entry of other versions is measured again
  RESNETKIT_SUITE_TUNING_CACHE="$reports/tuning-edge.json" pytest_module .venv-edge/bin/python tests/test_edge.py "$@" \
    >"$reports/edge.log" 2>&1
}
# Beside the other modules, at the lowest CPU and I/O priority, so that they take only what the others leave idle
# (about 40 % of 2 cores, measured in a CI run): the Docker image check (it counts as one test, skipped, saying why,
# where Docker cannot run) and the edge tests
nice -n 19 ionice -c 3 scripts/docker_check.sh >"$reports/docker.log" 2>&1 &
docker_check=$!
( renice -n 19 -p "$BASHPID" >/dev/null; ionice -c 3 -p "$BASHPID"; edge_tests "$@" ) &
edge=$!
background=("$docker_check" "$edge")
# Each module in a process forked from one that imported torch, pytest and resnetkit once (scripts/test_modules.py);
# --durations: the log names every test over 20 s, where CI's time goes
modules=()
for module in tests/test_*.py; do
  [ "$module" = tests/test_edge.py ] || modules+=("$module")
done
.venv/bin/python scripts/test_modules.py "$reports" "${modules[@]}" -- --durations=5 --durations-min=20 "$@" \
  || { status=1; failed_modules+=("scripts/test_modules.py (exit $?)"); }
[ ! -f "$reports/exit-codes" ] || while read -r module code; do
  record "$module" "$code"
done <"$reports/exit-codes"
code=0
wait "$edge" || code=$?
if [ "$code" -eq 99 ]; then
  cat "$reports/edge-setup.log" >&2; echo "error: could not set up .venv-edge for tests/test_edge.py" >&2
  status=1 failed_modules+=("tests/test_edge.py (no .venv-edge)")
else
  cat "$reports/edge.log"
  record tests/test_edge.py "$code"
fi
code=0
wait "$docker_check" || code=$?
cat "$reports/docker.log"
case $code in 0) failures=0 skipped=0 ;; 3) failures=0 skipped=1 ;; *) failures=1 skipped=0 status=1 failed_modules+=("scripts/docker_check.sh (exit $code)") ;; esac
echo "<testsuite name=\"docker_check\" tests=\"1\" failures=\"$failures\" errors=\"0\" skipped=\"$skipped\"/>" \
  >"$reports/docker_check.xml"
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
[ "$status" -eq 0 ] || echo "error: failed: ${failed_modules[*]}; their output is above" >&2
exit "$status"
