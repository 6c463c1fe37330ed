"""``resnetkit serve``: web page + JSON API + TorchServe-compatible API with dynamic batching."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.device import resolve_device
from ..core.errors import ResnetkitError
from ..core.extras import extra_of, require
from .app import RandomWeightsFlag, app

try:
    from ..serve.settings import ENV_PREFIX, ServeSettings

    _DEFAULTS = ServeSettings.model_construct()  # the defaults, without reading RESNETKIT_*
except ModuleNotFoundError as exc:  # no serve extra: the command only says which one to install
    if extra_of(exc.name or "") is None:
        raise
    ENV_PREFIX, _DEFAULTS = "RESNETKIT_", None


def _opt(flag: str, help: str, kind: Any = str, unset: str = "none", **extra: Any) -> Any:
    """An option whose default lives in ServeSettings (shown in the help, ``unset`` when None), also read
    from RESNETKIT_<NAME>."""
    name = flag.lstrip("-").replace("-", "_")
    default = getattr(_DEFAULTS, name, None)
    shown = unset if default is None else default
    return Annotated[kind | None, typer.Option(flag, help=f"{help} (default: {shown}; env {ENV_PREFIX}{name.upper()})",
                                               show_default=False, **extra)]


ModelsArg = Annotated[str | None, typer.Argument(
    help="Comma-separated model references (zoo names or resnetkit model files), each optionally NAME=REF "
         f"(default: none; env {ENV_PREFIX}MODELS)", show_default=False, metavar="MODEL[,MODEL...]")]
HostOpt = _opt("--host", "Address to bind; 0.0.0.0 exposes the server to the network.")
PortOpt = _opt("--port", "TCP port (0: any free port).", int)
MaxBatchOpt = _opt("--max-batch-size", "Most images per forward pass.", int, min=1)
MaxWaitOpt = _opt("--max-wait-ms", "Longest an image waits for its batch to fill while more are being decoded.",
                  float, min=0)
ThreadsOpt = _opt("--threads", "Intra-op threads of each model instance's runner (on the CPU; unused on a GPU).", int,
                  unset="chosen by measuring the models' decode + inference pipeline", min=1)
InstancesOpt = _opt("--instances", "Copies of each model that run batches at the same time, each with --threads "
                    "intra-op threads (on the CPU only: refused on a GPU, which batching fills; with --ray, use --replicas).", int,
                    unset="chosen with --threads by measuring; one if only --threads is given", min=1)
UploadOpt = _opt("--max-upload-mb", "Largest request body, in MiB (413 above).", float)
FilesOpt = _opt("--max-files", "Most images in one request (413 above).", int, min=1)
PixelsOpt = _opt("--max-pixels", "Largest image in pixels (decompression-bomb guard).", int, min=1)
QueueOpt = _opt("--max-queue", "Most images in flight per model (503 above).", int, min=1)
WorkersOpt = _opt("--workers", "Decode/preprocess threads shared by the models.", int,
                  unset="the cores inference leaves, chosen with --threads; every usable core on a GPU", min=1)
BackendOpt = _opt("--backend", "Inference backend (see 'resnetkit backends').",
                  unset="auto for PyTorch models (the fastest backend measured on this machine); an exported file's "
                        "own runtime: ONNX Runtime for .onnx, OpenVINO for .xml, TorchScript for .torchscript")
PrecisionOpt = _opt("--precision", "fp32, fp16, bf16 or int8, backend permitting.",
                    unset="auto's: bf16 where the CPU computes it natively, else fp32; fp16 on a GPU; a file's stored "
                          "precision")
DeviceOpt = _opt("--device", "Where the models run: auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda or "
                 "cuda:N; several models share the one device.")
TokenOpt = _opt("--token", "Require 'Authorization: Bearer TOKEN' on /v1 and /predictions.", unset="no token")
AccessLogOpt = Annotated[bool | None, typer.Option("--access-log/--no-access-log", show_default=False,
                                                   help=f"Log every request (default: on; env {ENV_PREFIX}ACCESS_LOG)")]
RayFlag = Annotated[bool, typer.Option("--ray", help="Run as a Ray Serve application (needs the ray extra, see docs/scale.md); "
                                               "joins RAY_ADDRESS, else starts a local Ray.")]
ReplicasOpt = Annotated[int | None, typer.Option("--replicas", min=1, show_default=False,
                                                 help="With --ray: replicas per model (default: 1).")]
AutoscaleOpt = Annotated[str | None, typer.Option("--autoscale", metavar="MIN:MAX", show_default=False,
                                                  help="With --ray: autoscale each model between MIN and MAX replicas (default: fixed --replicas).")]
ConfigOutOpt = Annotated[str | None, typer.Option("--config-out", show_default=False,
                                                  help="Write the Ray Serve config for 'serve deploy' to this YAML "
                                                       "file and exit (default: none).")]
GpusPerReplicaOpt = Annotated[float | None, typer.Option(
    "--gpus-per-replica", min=0, show_default=False,
    help="With --ray: GPUs each model replica asks Ray for; fractions share a GPU (0.25: four replicas on one) "
         "(default: 1 with --device cuda, else 0: the driver may have no GPU while the cluster has)")]
RAY_OPTIONS = ("ray", "replicas", "autoscale", "gpus_per_replica", "config_out")


@app.command("serve")
def serve_command(
    models: ModelsArg = None, host: HostOpt = None, port: PortOpt = None, max_batch_size: MaxBatchOpt = None,
    max_wait_ms: MaxWaitOpt = None, threads: ThreadsOpt = None, instances: InstancesOpt = None,
    max_upload_mb: UploadOpt = None, max_files: FilesOpt = None, max_pixels: PixelsOpt = None,
    max_queue: QueueOpt = None, workers: WorkersOpt = None,
    backend: BackendOpt = None, precision: PrecisionOpt = None, device: DeviceOpt = None,
    random_weights: RandomWeightsFlag = False, token: TokenOpt = None, access_log: AccessLogOpt = None,
    ray: RayFlag = False, replicas: ReplicasOpt = None, autoscale: AutoscaleOpt = None,
    gpus_per_replica: GpusPerReplicaOpt = None, config_out: ConfigOutOpt = None,
) -> None:
    """Serve models over HTTP: web page at /, JSON API (docs at /docs), TorchServe-compatible /predictions and /ping, /healthz, /readyz, Prometheus /metrics.

    Example: resnetkit serve resnet50,cifar_resnet20 --port 8000 (offline, to try the page: add --random-weights; env RESNETKIT_RANDOM_WEIGHTS). Ctrl-C or SIGTERM finishes in-flight requests, then exits.
    """
    require("serve", "'resnetkit serve'")  # ServeSettings was imported above when it passes
    if (replicas or autoscale or gpus_per_replica is not None) and not (ray or config_out):
        raise ResnetkitError("--replicas, --autoscale and --gpus-per-replica apply to Ray Serve: add --ray (see "
                             "docs/scale.md), or drop them to serve from this one process.")
    random_weights = random_weights or None  # not given: RESNETKIT_RANDOM_WEIGHTS decides
    settings = ServeSettings.from_env(**{k: v for k, v in locals().items() if k not in RAY_OPTIONS})
    if ray or config_out:
        if settings.instances:
            raise ResnetkitError("--instances applies to 'resnetkit serve' without --ray; Ray Serve runs copies of "
                                 "each model as replicas: use --replicas N (each with --threads threads).")
        from ..scale import run_ray_serve

        return run_ray_serve(settings, replicas=replicas, autoscale=autoscale, gpus_per_replica=gpus_per_replica,
                             config_out=config_out)
    if (settings.instances or 1) > 1 and (device := resolve_device(settings.device)).is_cuda:
        raise ResnetkitError(f"--instances applies to serving on the CPU; on {device} each model runs as one instance "
                             "and batching fills the GPU. Drop --instances, or add --device cpu.")
    from ..serve.server import run_server  # imported here so that 'resnetkit --help' stays fast

    run_server(settings)
