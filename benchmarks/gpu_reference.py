"""resnetkit on a GPU against plain PyTorch in the same process, interleaved: the inference checks of docs/gpu.md.

1. ``throughput``: resnet50 (random weights) at batch 256 in fp16, as ``bench`` runs it (``load_model`` with the
   default backend, fp32 inputs already on the GPU, every call synchronised) against plain eager fp16
   channels-last on fp16 channels-last inputs; with ``--compile`` also resnetkit's ``compile`` backend against
   plain ``torch.compile`` (default mode; each compiles once, tens of seconds).
2. ``latency``: resnet50 at batch 1, resnetkit's default backend against plain CUDA-graph replay of the same
   network. resnetkit's time includes copying (and casting) the fp32 input, already on the GPU, into its graph's
   input buffer; the plain replay reads a buffer filled beforehand.
3. ``fidelity``: the CIFAR ResNets (real weights, ``--weights-dir``) in fp16 and bf16 on the GPU against fp32 on
   the CPU: top-1 agreement over the CIFAR-10 test set (``--data``), and both accuracies.

Timing: ``--rounds`` rounds; in each, ``--calls`` synchronised calls of each side in turn (the order alternates),
after warm-up; medians over all calls. Prints a table and writes JSON (``-o``).

    python benchmarks/gpu_reference.py --checks throughput,latency,fidelity -o results/gpu/reference.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision

from resnetkit import load_model
from resnetkit.backends.base import RunnerOptions
from resnetkit.core.device import CPU, resolve_device
from resnetkit.core.fileio import write_text_atomic
from resnetkit.core.images import iter_image_paths, iter_prepared_batches, prepare_image
from resnetkit.core.measure import timed_calls

ROOT = Path(__file__).resolve().parents[1]


def interleaved(sides: dict[str, Callable[[], object]], rounds: int, calls: int, sync: Callable[[], None],
                warmup: int = 5) -> dict[str, float]:
    """Median ms per call of each side, timed in alternating order within each round."""
    for fn in sides.values():
        timed_calls(fn, calls=warmup, sync=sync)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples[name] += timed_calls(sides[name], calls=calls, sync=sync)
    return {name: statistics.median(values) for name, values in samples.items()}


def plain_resnet50(device: torch.device) -> torch.nn.Module:
    return torchvision.models.resnet50().to(device).half().eval().to(memory_format=torch.channels_last)


def throughput(args: argparse.Namespace) -> dict:
    device = resolve_device("cuda")
    batch = 256
    ours = load_model("resnet50", pretrained=False, options=RunnerOptions(batch_size=batch, precision="fp16",
                                                                           device=device))
    inputs = torch.randn(batch, 3, 224, 224, device=device.torch)
    ours.logits(inputs)  # builds (auto measures its candidates now, or reads its cache)
    plain = plain_resnet50(device.torch)
    plain_inputs = inputs.half().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        sides = {"resnetkit": lambda: ours.logits(inputs), "plain eager": lambda: plain(plain_inputs)}
        if args.compile:
            compiled_ours = load_model("resnet50", pretrained=False, backend="compile",
                                       options=RunnerOptions(batch_size=batch, precision="fp16", device=device))
            plain_compiled = torch.compile(plain_resnet50(device.torch))
            started = time.perf_counter()
            compiled_ours.logits(inputs)
            ours_compile_s = time.perf_counter() - started
            started = time.perf_counter()
            plain_compiled(plain_inputs)
            plain_compile_s = time.perf_counter() - started
            sides.update({"resnetkit compile": lambda: compiled_ours.logits(inputs),
                          "plain torch.compile": lambda: plain_compiled(plain_inputs)})
        medians = interleaved(sides, args.rounds, args.calls, device.synchronize)
    rows = {name: {"ms_per_batch": round(ms, 3), "img_s": round(batch / ms * 1000, 1)} for name, ms in medians.items()}
    result = {"model": "resnet50", "batch_size": batch, "precision": "fp16", "resnetkit_ran": ours.ran.label(),
              "rows": rows, "ratio_vs_plain_eager": round(medians["plain eager"] / medians["resnetkit"], 3)}
    if args.compile:
        result["compile_seconds"] = {"resnetkit": round(ours_compile_s, 1), "plain": round(plain_compile_s, 1)}
        result["ratio_compile_vs_plain_compile"] = round(medians["plain torch.compile"] / medians["resnetkit compile"], 3)
        result["ratio_vs_plain_compile"] = round(medians["plain torch.compile"] / medians["resnetkit"], 3)
    return result


def latency(args: argparse.Namespace) -> dict:
    device = resolve_device("cuda")
    ours = load_model("resnet50", pretrained=False, options=RunnerOptions(batch_size=1, device=device))
    inputs = torch.randn(1, 3, 224, 224, device=device.torch)
    ours.logits(inputs)
    plain = plain_resnet50(device.torch)
    static = inputs.half().contiguous(memory_format=torch.channels_last)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                plain(static)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            plain(static)
        eager_plain = plain_resnet50(device.torch)
        medians = interleaved({"resnetkit": lambda: ours.logits(inputs), "plain CUDA graph": graph.replay,
                               "plain eager": lambda: eager_plain(static)}, args.rounds, args.calls,
                              device.synchronize)
    return {"model": "resnet50", "batch_size": 1, "resnetkit_ran": ours.ran.label(),
            "rows": {name: {"ms": round(ms, 4)} for name, ms in medians.items()},
            "ratio_vs_plain_graph": round(medians["resnetkit"] / medians["plain CUDA graph"], 3),
            "note": "resnetkit's calls include copying the fp32 input (on the GPU) into its graph's fp16 buffer"}


def fidelity(args: argparse.Namespace) -> dict:
    from resnetkit.core import weights
    from resnetkit.core.zoo import get_spec

    device = resolve_device("cuda")
    files = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th"}
    paths = [str(p) for p in iter_image_paths([args.data])]
    labels_by_class = sorted({Path(p).parent.name for p in paths})
    labels = torch.tensor([labels_by_class.index(Path(p).parent.name) for p in paths])
    rows = {}
    for model, file in files.items():
        spec = get_spec(model)
        if not weights.cached_path(spec.default_weights).is_file():
            weights.import_file(model, spec.default_weights, Path(args.weights_dir) / file)
        reference = load_model(model, backend="eager", options=RunnerOptions(precision="fp32", device=CPU))
        prepare = functools.partial(prepare_image, preprocessing=reference.meta.preprocessing)
        images = torch.cat([b.images for b in iter_prepared_batches(paths, prepare, batch_size=500, workers=8,
                                                                     processes=True)])
        assert len(images) == len(paths), "every CIFAR-10 test image decodes"
        cpu_top1 = torch.cat([reference.logits(part).argmax(1) for part in images.split(1000)])
        categories = list(reference.meta.categories)
        truth = torch.tensor([categories.index(labels_by_class[i]) for i in labels])
        rows[model] = {"cpu_fp32_top1": round(100 * float((cpu_top1 == truth).float().mean()), 2)}
        for precision in ("fp16", "bf16"):
            gpu = load_model(model, backend="eager", options=RunnerOptions(precision=precision, device=device))
            top1 = torch.cat([gpu.logits(part).argmax(1) for part in images.split(1000)])
            rows[model][precision] = {"agreement_with_cpu_fp32": round(100 * float((top1 == cpu_top1).float().mean()), 2),
                                      "top1": round(100 * float((top1 == truth).float().mean()), 2)}
    return {"images": len(paths), "data": str(args.data), "rows": rows}


CHECKS = {"throughput": throughput, "latency": latency, "fidelity": fidelity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default="throughput,latency,fidelity")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10, help="synchronised calls per side and round")
    parser.add_argument("--compile", action="store_true", help="also compare torch.compile (compiles twice)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10" / "test"))
    parser.add_argument("--weights-dir", default=str(ROOT.parent / "shared" / "weights" / "cifar10"))
    parser.add_argument("-o", "--output", default=str(ROOT / "results" / "gpu" / "reference.json"))
    args = parser.parse_args()
    device = resolve_device("cuda")
    results = {"device": device.describe(), "torch": torch.__version__, "command": " ".join(sys.argv),
               "method": f"{args.rounds} rounds x {args.calls} synchronised calls per side, alternating order"}
    for name in args.checks.split(","):
        started = time.perf_counter()
        results[name] = CHECKS[name](args)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    write_text_atomic(args.output, json.dumps(results, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
