#!/usr/bin/env bash
# The main job: set up, then measure the default model set on this machine and recommend.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "resnetkit main job: setting up .venv (the first time: torch, the runtimes and resnetkit, about 25 s with the wheels on disk)" >&2
scripts/setup.sh backends  # what bench needs: the core and the runtimes (scripts/setup.sh alone adds every other job's)
mkdir -p results
echo "set up; measuring the default models on this machine (first run: auto also times its candidates per model)" >&2
.venv/bin/resnetkit bench -o results/bench.json --csv results/bench.csv --plot results/bench.png --recommend "$@"
