#!/usr/bin/env bash
# The GPU check: one command for a machine with an NVIDIA GPU, about 6 minutes on one GPU. It runs the tests marked
# gpu, prints bench's GPU table, measures resnetkit against plain PyTorch in the same run (throughput at batch 256,
# batch-1 latency, fp16/bf16 fidelity, predict over real JPEGs, training from JPEG folders), and writes
# results/gpu/*.json, their logs and results/gpu/summary.md (a markdown table of the checks); with $OUT set (the
# device tool), also results/gpu/summary.md and results/gpu.tgz there.
#   scripts/gpu_check.sh [STEP...]    steps: tests bench reference predict train (default: all, in that order)
# Real weights and images come from RESNETKIT_SHARED (default ../shared): weights/cifar10/*.th,
# data/cifar10/{test,train}. Runs from src/ when resnetkit is not installed in the Python used.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python
"$python" -c "import resnetkit" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export RESNETKIT_SHARED=${RESNETKIT_SHARED:-../shared} PYTHONUNBUFFERED=1
shared=$RESNETKIT_SHARED
out=results/gpu
mkdir -p "$out"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, carry on after a failure
  local name=$1 limit=$2 started code
  shift 2
  echo "== $name (at most ${limit} s): $*"
  started=$(date +%s)
  timeout "$limit" "$@" > >(tee "$out/$name.log") 2>&1
  code=$?
  echo "== $name: exit $code after $(( $(date +%s) - started )) s"
  [ "$code" -eq 0 ] || status=1
}

"$python" - <<'PY' || exit 2
import torch
from resnetkit.core.device import resolve_device
print("GPU:", resolve_device("cuda").describe(), "| torch", torch.__version__)
PY
for name in ${*:-tests bench reference predict train}; do
  case $name in
    tests) step tests 240 "$python" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$out/tests.xml" tests ;;
    bench) step bench 180 "$python" -m resnetkit bench --device cuda --table seeds -o "$out/seeds.json"
           step bench_resnet50 120 "$python" -m resnetkit bench --device cuda --models resnet50 --batch-size 256 \
             --precisions fp16 -o "$out/bench_resnet50.json" ;;
    reference) step reference 240 "$python" benchmarks/gpu_reference.py --compile -o "$out/reference.json" \
                 --data "$shared/data/cifar10/test" --weights-dir "$shared/weights/cifar10" ;;
    predict) step predict 150 "$python" benchmarks/gpu_predict.py --data "$shared/data/cifar10/test" \
               -o "$out/predict.json" ;;
    train) step train 180 "$python" benchmarks/train_throughput.py --device cuda --model resnet50 --batch-size 128 \
             --data "$shared/data/cifar10/train" -o "$out/train.json" ;;
    *) echo "error: unknown step '$name' (steps: tests bench reference predict train)" >&2; exit 2 ;;
  esac
done
"$python" benchmarks/gpu_summary.py "$out" | tee "$out/summary.md"
if [ -n "${OUT:-}" ]; then
  cp "$out/summary.md" "$OUT/" && tar czf "$OUT/gpu.tgz" -C results gpu
fi
exit "$status"
