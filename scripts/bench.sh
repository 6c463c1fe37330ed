#!/usr/bin/env bash
# The main job: set up, then measure the default model set on this machine and recommend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p results
.venv/bin/resnetkit bench -o results/bench.json --csv results/bench.csv --plot results/bench.png --recommend "$@"
