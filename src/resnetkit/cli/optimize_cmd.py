"""``resnetkit export | quantize | prune | backends``: make models smaller and faster, with proof.

Each command prints a before/after table (size, latency, and what it changed in the
predictions) so no optimization is reported without its cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..backends import describe
from ..backends.base import RunnerOptions, file_suffixes, quantize_methods, quantizers_of
from ..core.device import CPU, resolve_device
from ..run.loading import Classifier, load_model
from ..shrink.compare import Agreement, LatencyMethod, ratio
from ..shrink.export import ExportReport, check_export_request, export_model, export_table, onnx_opsets
from ..shrink.prune import METHODS as PRUNE_METHODS
from ..shrink.prune import PruneReport, check_prune_request, prune
from ..shrink.quantize import CALIBRATION_METHODS, QuantizeReport, quantize, resolve_request
from .app import (JsonFlag, ModelArg, OutputOpt, RandomWeightsFlag, WeightsOpt, app, console, default, print_json,
                  styled)

EvalOpt = Annotated[str | None, typer.Option("--eval", help="Labelled class-per-folder images: report top-1 before and after (default: none).")]
EvalLimitOpt = Annotated[int | None, typer.Option("--eval-limit", min=1, help="Evaluate a fixed random subset of N images (default: all).")]
LatencyBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size of the latency measurement.")]
DEVICES = "auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda or cuda:N"
LatencyDeviceOpt = Annotated[str, typer.Option("--device", help=(
    f"Where the latencies are measured: {DEVICES}. The model is read and the file written in fp32 on the CPU "
    "whatever the device; a file whose runtime runs on the CPU only (see 'resnetkit backends') is timed on the CPU "
    "under auto, and refused with cuda."))]
PruneDeviceOpt = Annotated[str, typer.Option("--device", help=(
    f"Where the latencies before and after are measured (eager PyTorch, fp32): {DEVICES}. Pruning, fine-tuning and "
    "saving run on the CPU whatever the device."))]
BackendsDeviceOpt = Annotated[str, typer.Option("--device", help=f"The device whose default precisions are shown: {DEVICES}.")]


def _default_writers() -> str:
    """``fp16 openvino, ...``: each quantize method's default backend, from the registry."""
    return ", ".join(f"{method} {quantizers_of(method)[0][0].name}" for method in quantize_methods())


def _load_source(model: str, weights: str | None, random_weights: bool, command: str) -> Classifier:
    """The model to optimize, loaded once, on eager PyTorch in exact fp32 on the CPU: the reference of every report,
    and what files are written from. An exported file has no PyTorch model: the error says what to give instead."""
    if Path(model).suffix.lower() in file_suffixes():
        load_model(model).torch_module(command)
    return load_model(model, weights=weights, pretrained=not random_weights, backend="eager",
                      options=RunnerOptions(precision="fp32", device=CPU))


def _latency_column(batch_size: int, device_name: str, runner: str = "") -> str:
    """``latency p50 (ms, batch N)``, with the runner if given and the device unless it is the CPU."""
    details = [f"batch {batch_size}", runner, "" if device_name == "CPU" else f"on {device_name}"]
    return f"latency p50 (ms, {', '.join(d for d in details if d)})"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _table(title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...], numeric: bool = True) -> Table:
    """A table whose first column is a label and, if ``numeric``, the others right-aligned numbers."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if numeric and i else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _print_agreement(agreement: Agreement, against: str) -> None:
    console.print(f"predictions vs {against}: {agreement.describe()}", highlight=False)


def _print_latency_method(method: LatencyMethod | None) -> None:
    if method is not None:
        console.print(f"latency: {method.describe()}", highlight=False)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(styled(("note:", "yellow"), f" {note}"), highlight=False)


@app.command("export")
def export_command(
    model: ModelArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(export_table())} (see 'resnetkit backends').")],
    output: OutputOpt,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="ONNX: any batch size (default: fixed).")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help=default(
        f"ONNX opset, {onnx_opsets()[0]} to {onnx_opsets()[-1]}.", onnx_opsets()[0]))] = None,
    check_data: Annotated[str | None, typer.Option("--check-data", help="Images for the check (default: generated).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="What the file stores: fp32, fp16 (onnx, litert, coreml) or int8 (litert, executorch; needs --calib) (default: fp32; coreml: fp16).")] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="int8: calibration images, any folder layout (default: none).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", min=1, help="int8: calibration images to use.")] = 300,
    eval_dir: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    batch_size: LatencyBatchOpt = 1,
    device: LatencyDeviceOpt = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Export to ONNX, TorchScript, OpenVINO IR, LiteRT, ExecuTorch, Core ML, a backend plug-in's format or a Hugging Face folder (hf) with the class names and preprocessing, then check it against eager."""
    measured_on = check_export_request(fmt, output, resolve_device(device), precision, calib, opset)[2]
    report = export_model(_load_source(model, weights, random_weights, "export"), fmt, output, dynamic_batch=dynamic_batch,
                          opset=opset, check_dir=check_data, batch_size=batch_size, device=measured_on,
                          precision=precision, calib_dir=calib, calib_size=calib_size, eval_dir=eval_dir,
                          eval_limit=eval_limit)
    if json_output:
        print_json(report.to_dict())
        return
    _print_export(report, fmt, batch_size)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_export(report: ExportReport, fmt: str, batch_size: int) -> None:
    rows = [("eager (fp32)", _mb(report.eager_size_bytes), _ms(report.eager_latency_ms), ""),
            (f"{fmt} on {report.backend} ({report.precision})", _mb(report.size_bytes), _ms(report.latency_ms),
             report.speedup)]
    console.print(_table(f"{report.source} -> {report.path} ({report.name})", rows,
                         ("", "size (MB)", _latency_column(batch_size, report.device_name), "vs eager")))
    if report.checker:
        console.print(f"{report.checker}: passed", highlight=False)
    if report.calibration:
        console.print(f"calibrated on {report.calibration}", highlight=False)
    if report.agreement is not None:
        _print_agreement(report.agreement, "eager")
    _print_latency_method(report.latency_method)
    if report.top1 is not None:
        console.print(f"top-1 on {report.eval_images} of {report.eval_dir}: eager {report.source_top1:.2f} %, {fmt} {report.top1:.2f} % "
                      f"({report.top1 - report.source_top1:+.2f} points)", highlight=False)
    for key, value in (report.inspection or {}).items():
        console.print(f"{key}: {value}", highlight=False)
    _print_notes(report.notes)


@app.command("quantize")
def quantize_command(
    model: ModelArg,
    method: Annotated[str, typer.Option("--method", "-m", help=f"One of: {', '.join(quantize_methods())}.")],
    output: OutputOpt,
    backend: Annotated[str | None, typer.Option("--backend", help=default(
        "The backend that writes the file (see 'resnetkit backends', column writes).",
        "the one whose file type -o names, else the method's: " + _default_writers()))] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration images (static-int8), any folder layout (default: none).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", min=1, help="Calibration images to use.")] = 300,
    calibration: Annotated[str | None, typer.Option("--calibration", help=f"Activation ranges: {', '.join(CALIBRATION_METHODS)} (default: histogram on openvino, percentile on onnxruntime).")] = None,
    validate: Annotated[str | None, typer.Option("--validate", help="static-int8 on openvino: NNCF accuracy control on these labelled images (one sub-folder per class): int8 layers go back to float until top-1 is within --max-drop points of float. Use images you do not --eval on (default: none).")] = None,
    validate_size: Annotated[int, typer.Option("--validate-size", min=1, help="Images of --validate to use (a fixed random subset).")] = 1000,
    max_drop: Annotated[float, typer.Option("--max-drop", help="Top-1 points accuracy control may lose against float.")] = 0.5,
    eval_dir: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    batch_size: LatencyBatchOpt = 1,
    device: LatencyDeviceOpt = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Quantize to fp16, bf16, dynamic int8 or static int8; report size, latency and prediction changes vs fp32."""
    checks = {"validate_dir": validate, "validate_size": validate_size, "max_drop": max_drop}
    measured_on = resolve_request(method, backend, output, calib, calib_size, calibration, **checks,
                                  device=resolve_device(device)).device
    report = quantize(_load_source(model, weights, random_weights, "quantize"), method, output, backend=backend, calib_dir=calib,
                      calib_size=calib_size, calibration_method=calibration, eval_dir=eval_dir, eval_limit=eval_limit,
                      batch_size=batch_size, device=measured_on, **checks)
    if json_output:
        print_json(report.to_dict())
        return
    _print_quantize(report)


def _print_quantize(report: QuantizeReport) -> None:
    top1 = report.top1 is not None
    rows = [
        ("fp32, eager PyTorch (reference)", _mb(report.fp32_size_bytes), f"{report.fp32_latency_ms:.2f}", "1.00x",
         f"{report.fp32_top1:.2f}" if top1 else "-"),
        *([(f"fp32 on {report.backend}", "", f"{report.fp32_backend_latency_ms:.2f}", report.fp32_backend_speedup, "-")]
          if report.backend != "eager" else []),  # eager's fp32 is the reference row
        *([(f"{report.default_precision} on {report.backend} (its default here)", "",
            f"{report.default_backend_latency_ms:.2f}", report.default_backend_speedup, "-")]
          if report.default_precision else []),
        (f"{report.method} file on {report.backend} (computes in {report.precision})", _mb(report.size_bytes),
         f"{report.latency_ms:.2f}", report.speedup, f"{report.top1:.2f}" if top1 else "-"),
    ]
    columns = ("", "size (MB)", _latency_column(report.batch_size, report.device_name), "speed-up vs eager", "top-1 %")
    console.print(_table(f"{report.source} {report.method} -> {report.path} ({report.name})", rows, columns))
    console.print(f"size: {_size_change(report.fp32_size_bytes, report.size_bytes)} the fp32 weights", highlight=False)
    if report.default_precision:
        console.print(f"vs {report.backend}'s default ({report.default_precision} on this {report.device_name}): "
                      f"{report.speedup_vs_default} (interleaved in the same run)", highlight=False)
    if report.int8_kernels:
        kernels = ", ".join(f"{op} x{n}" for op, n in report.int8_kernels.items())
        console.print(f"int8 kernels in the runtime graph: {kernels}", highlight=False)
    if report.calibration:
        console.print(f"calibration: {report.calibration}", highlight=False)
    _print_latency_method(report.latency_method)
    if top1:
        console.print(f"top-1 on {report.eval_images} of {report.eval_dir}: {report.fp32_top1:.2f} % -> {report.top1:.2f} % "
                      f"({report.top1 - report.fp32_top1:+.2f} points)", highlight=False)
    _print_agreement(report.agreement, "fp32 eager")
    _print_notes(report.notes)


@app.command("prune")
def prune_command(
    model: ModelArg,
    method: Annotated[str, typer.Option("--method", "-m", help=f"One of: {', '.join(PRUNE_METHODS)}.")],
    output: OutputOpt,
    amount: Annotated[float, typer.Option("--amount", help="Fraction of weights (l1-unstructured) or channels (channel) to remove.")] = 0.3,
    round_to: Annotated[int | None, typer.Option("--round-to", min=1, help=default("Channel counts kept as multiples of N.", "8; 4 for CIFAR ResNets"))] = None,
    finetune_dir: Annotated[str | None, typer.Option("--finetune", help="Class-per-folder training images for a short recovery fine-tune (default: none).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Fine-tune epochs.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tune learning rate.")] = 0.01,
    eval_dir: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsFlag = False,
    batch_size: LatencyBatchOpt = 1,
    device: PruneDeviceOpt = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Prune weights (global L1) or whole channels (dependency-aware); report params, MACs, latency and accuracy."""
    check_prune_request(method, amount, output)
    measured_on = resolve_device(device)
    report = prune(_load_source(model, weights, random_weights, "prune"), method, output, amount=amount, round_to=round_to,
                   finetune_dir=finetune_dir, epochs=epochs, lr=lr, eval_dir=eval_dir, eval_limit=eval_limit,
                   batch_size=batch_size, device=measured_on)
    if json_output:
        print_json(report.to_dict())
        return
    _print_prune(report)


def _print_prune(report: PruneReport) -> None:
    params = "non-zero params (M)" if report.method == "l1-unstructured" else "params (M)"
    rows = [("before", f"{report.params_before / 1e6:.3f}", f"{report.macs_before / 1e9:.3f}", _mb(report.size_bytes_before),
             f"{report.latency_ms_before:.2f}"),
            ("after", f"{report.params_after / 1e6:.3f}", f"{report.macs_after / 1e9:.3f}", _mb(report.size_bytes_after),
             f"{report.latency_ms_after:.2f}"),
            ("change", _pct(report.params_before, report.params_after), _pct(report.macs_before, report.macs_after),
             _pct(report.size_bytes_before, report.size_bytes_after), report.speedup)]
    columns = ("", params, "GMACs", "size (MB)", _latency_column(report.batch_size, report.device_name, "eager"))
    console.print(_table(f"{report.source} {report.method} {report.amount:g} -> {report.path} ({report.name})", rows,
                         columns))
    if report.sparsity is not None:
        console.print(f"sparsity of conv/linear weights: {100 * report.sparsity:.1f} %", highlight=False)
    if report.widths:
        shown = ", ".join(f"{name} {a}->{b}" for name, (a, b) in list(report.widths.items())[:6])
        more = f" (+{len(report.widths) - 6} more)" if len(report.widths) > 6 else ""
        console.print(f"channels (multiples of {report.round_to}): {shown}{more}", highlight=False)
    _print_latency_method(report.latency_method)
    if report.top1_before is not None:
        finetuned = f" -> {report.top1_finetuned:.2f} % after fine-tuning" if report.top1_finetuned is not None else ""
        console.print(f"top-1 on {report.eval_images} of {report.eval_dir}: {report.top1_before:.2f} % -> {report.top1_pruned:.2f} % pruned"
                      f"{finetuned}", highlight=False)
    _print_agreement(report.agreement, "the unpruned model")
    _print_notes(report.notes)


def _size_change(before: int, after: int) -> str:
    return f"{ratio(before, after)} smaller than" if after <= before else f"{ratio(after, before)} larger than"


def _pct(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f} %" if before else "-"


@app.command("backends")
def backends_command(device: BackendsDeviceOpt = "auto", json_output: JsonFlag = False) -> None:
    """List inference backends: available on this machine, version, devices, precisions, default precision on the
    device, files read, files written (export formats, quantize methods)."""
    on = resolve_device(device)
    rows = describe(on)
    if json_output:
        print_json(rows)
        return
    table_rows = [(r["backend"], "yes" if r["available"] else "no", f"{r['package']} {r['version'] or '-'}",
                   ", ".join(r["devices"]), ", ".join(r["precisions"]), r["default_precision"] or "-",
                   ", ".join(r["reads"]) or "-", _writes(r) or "-", r["remark"]) for r in rows]
    columns = ("backend", "available", "package", "devices", "precisions", f"default on {on.name}", "reads", "writes",
               "remark")
    console.print(_table("inference backends", table_rows, columns, numeric=False))


def _writes(row: dict) -> str:
    """``export onnx; quantize dynamic-int8 (default), static-int8``: the files a backend writes, by command."""
    exports = ", ".join(e["format"] for e in row["exports"])
    methods = ", ".join(q["method"] + (" (default)" if q["default"] else "") for q in row["quantizes"])
    return "; ".join(part for part in (exports and f"export {exports}", methods and f"quantize {methods}") if part)
