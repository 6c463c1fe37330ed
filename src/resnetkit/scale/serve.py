"""``serve --ray``: the same FastAPI app and routes as ``resnetkit serve``, as a Ray Serve application.

* one :class:`ModelReplica` deployment per model: loads the model, decodes images in a thread pool and
  runs forward passes grouped by ``@serve.batch`` (``--max-batch-size``, ``--max-wait-ms``);
* an :class:`Ingress` deployment (``@serve.ingress``) running :func:`resnetkit.serve.app.create_app`
  with a :class:`RayHub`, whose models classify through the replicas' deployment handles.

:func:`build_app` is the application builder, so ``serve deploy`` runs the same thing from the YAML
that ``--config-out`` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ..backends.base import RunInfo
from ..core.errors import ImageError, ResnetkitError
from ..core.fileio import write_text_atomic
from ..core.images import stack_inputs
from ..core.spec import ModelMeta
from ..run.classify import Prediction, top_k
from ..serve.app import create_app
from ..serve.batcher import ServerBusyError
from ..serve.hub import ModelHub, ServedModel, load_served
from ..serve.metrics import ServeMetrics
from ..serve.server import bind_socket
from ..serve.settings import ModelEntry, ServeSettings
from .runtime import gpus_per_actor, hide_unassigned_gpus, node_cpus, ray_runtime

APP_NAME = "resnetkit"
IMPORT_PATH = "resnetkit.scale.serve:build_app"
RETRIES = 2  # sends of an image whose replica died mid-request


@serve.deployment
class ModelReplica:
    """One model on one Ray actor; concurrent images are grouped into forward passes by ``@serve.batch``."""

    def __init__(self, entry: str, settings: ServeSettings) -> None:
        hide_unassigned_gpus()
        parsed = ModelEntry.parse(entry)
        self.classifier = load_served(parsed, settings, settings.threads)
        self.name = parsed.served_name(self.classifier.meta)
        self.max_pixels = settings.max_pixels
        self.decode_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="decode")
        self.forward.set_max_batch_size(settings.max_batch_size)
        self.forward.set_batch_wait_timeout_s(settings.max_wait_ms / 1000.0)

    def describe(self) -> tuple[str, ModelMeta, RunInfo]:
        """Served name, metadata, and what runs the model where."""
        return self.name, self.classifier.meta, self.classifier.ran

    async def classify(self, data: bytes, k: int) -> list[Prediction] | ImageError:
        """Top-``k`` of one encoded image, or the :class:`ImageError` that refused it."""
        try:
            tensor = await asyncio.get_running_loop().run_in_executor(self.decode_pool, self._prepare, data)
        except ImageError as exc:
            return exc
        return await self.forward(tensor, k)

    def _prepare(self, data: bytes) -> torch.Tensor:
        return self.classifier.prepare(data, max_pixels=self.max_pixels, allow_multi_frame=False)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # replaced by the settings in __init__
    async def forward(self, tensors: list[torch.Tensor], ks: list[int]) -> list[list[Prediction]]:
        return await asyncio.to_thread(self._infer, tensors, ks)

    def _infer(self, tensors: list[torch.Tensor], ks: list[int]) -> list[list[Prediction]]:
        rows = top_k(self.classifier.probabilities(stack_inputs(tensors)), self.classifier.meta.categories, max(ks))
        return [row[:k] for row, k in zip(rows, ks)]


@dataclass(frozen=True)
class RemoteModel:
    """What the routes read of a model served by replicas: its metadata and what runs it where."""

    meta: ModelMeta
    ran: RunInfo


class RayBatcher:
    """The batcher interface of :class:`resnetkit.serve.batcher.DynamicBatcher`, over a deployment handle.

    Ray Serve retries a request on another replica only while it is being assigned; an image whose
    replica dies while classifying it fails with ``RayActorError``. Classifying is idempotent, so such
    an image is sent again (at most :data:`RETRIES` times) and the client sees no error.
    """

    def __init__(self, handle: DeploymentHandle, max_batch_size: int) -> None:
        self.handle = handle
        self.max_batch_size = max_batch_size

    async def classify(self, images: list[bytes], k: int) -> list[list[Prediction] | ImageError]:
        try:
            return list(await asyncio.gather(*(self._classify_one(data, k) for data in images)))
        except BackPressureError:
            raise ServerBusyError("The model's replicas have a full queue (--max-queue); retry shortly.") from None

    async def _classify_one(self, data: bytes, k: int) -> list[Prediction] | ImageError:
        for _ in range(RETRIES):
            with contextlib.suppress(RayActorError):
                return await self.handle.classify.remote(data, k)
        return await self.handle.classify.remote(data, k)

    async def close(self) -> None:
        """Nothing to drain here: Ray Serve drains the replicas when the application stops."""


class RayHub(ModelHub):
    """The hub of the FastAPI app, with models living in Ray Serve replicas instead of this process."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics, on_load_error: Callable[[str], None] | None,
                 *, handles: list[DeploymentHandle]) -> None:
        super().__init__(settings, metrics, on_load_error)
        self.handles = handles

    async def start(self) -> None:
        try:
            described = await asyncio.gather(*(h.describe.remote() for h in self.handles))
        except Exception as exc:  # noqa: BLE001 - a replica that cannot load reports its error here
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        refs = [ModelEntry.parse(entry).ref for entry in self.settings.models]
        for (name, meta, ran), handle, ref in zip(described, self.handles, refs):
            if name in self.models:
                self._fail(f"two models would be served as '{name}'. Name them with NAME=REF.")
                return
            batcher = RayBatcher(handle, self.settings.max_batch_size)
            self.models[name] = ServedModel(name, ref, RemoteModel(meta, ran), batcher)
        self.ready = True


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The FastAPI app of ``resnetkit serve`` (routes, page, metrics), classifying through the replicas."""

    def __init__(self, settings: ServeSettings, handles: list[DeploymentHandle]) -> None:
        self.settings = settings
        self.handles = handles

    def __serve_build_asgi_app__(self):
        return create_app(self.settings, hub_factory=partial(RayHub, handles=self.handles))


@dataclass(frozen=True)
class Scaling:
    """How each model's deployment runs on Ray Serve: a fixed number of replicas or an autoscaling range, and the
    GPUs each replica asks Ray for (fractions share one GPU: 0.25 puts four replicas on it)."""

    replicas: int | None = None  # None: 1 (or autoscale)
    autoscale: str | None = None  # "MIN:MAX"
    gpus_per_replica: float | None = None  # None: 1 with --device cuda, else 0 (the driver may have no GPU)

    def args(self) -> dict[str, Any]:
        """The builder's arguments for what was given."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def replica_options(self, settings: ServeSettings) -> dict[str, Any]:
        """``ModelReplica.options(...)`` for one model: replicas or autoscaling, queue limits, and what each replica
        asks Ray for: ``--threads`` CPUs (the threads its model runs on; else Ray's default of one) and GPUs."""
        options: dict[str, Any] = {
            # room for a full batch while the previous one runs
            "max_ongoing_requests": max(settings.max_batch_size * 2, 8), "max_queued_requests": settings.max_queue,
            **self._replicas(settings.max_batch_size)}
        resources = {"num_cpus": settings.threads} if settings.threads else {}
        gpus = gpus_per_actor(settings.device, self.gpus_per_replica, "--gpus-per-replica")
        if gpus:
            resources["num_gpus"] = gpus
        if resources:
            options["ray_actor_options"] = resources
        return options

    def fewest_replicas(self) -> int:
        """Replicas of each model that must start: ``--replicas``, else the autoscaling minimum (at least 1)."""
        return max(1, self.replicas or int(self._replicas(1).get("autoscaling_config", {}).get("min_replicas", 1)))

    def check_cpus(self, settings: ServeSettings, node_cpus: list[float]) -> None:
        """Refuse ``--threads`` replicas that no node, or not the whole cluster, has the CPUs for: Ray Serve would
        wait for them without end. ``node_cpus``: the CPUs of each alive node."""
        if not settings.threads or not node_cpus:
            return
        replicas = self.fewest_replicas() * len(settings.models)
        wanted = settings.threads * replicas
        if settings.threads > max(node_cpus) or wanted > sum(node_cpus):
            raise ResnetkitError(
                f"--threads {settings.threads} makes each replica ask Ray for {settings.threads} CPUs: {replicas} "
                f"replica(s) need {wanted}, and this Ray has {sum(node_cpus):g} ({max(node_cpus):g} on its largest "
                "node). Lower --threads or --replicas, or add nodes.")

    def _replicas(self, max_batch_size: int) -> dict[str, Any]:
        if self.replicas is not None and self.autoscale is not None:
            raise ResnetkitError("Give --replicas N or --autoscale MIN:MAX, not both.")
        if self.autoscale is None:
            return {"num_replicas": self.replicas or 1}
        match = re.fullmatch(r"(\d+):(\d+)", self.autoscale.strip())
        if not match or int(match[1]) > int(match[2]) or int(match[2]) < 1:
            raise ResnetkitError(f"--autoscale '{self.autoscale}' is not MIN:MAX with MIN <= MAX and MAX >= 1, e.g. 1:4.")
        return {"autoscaling_config": {"min_replicas": int(match[1]), "max_replicas": int(match[2]),
                                       "target_ongoing_requests": max_batch_size}}


SCALING_ARGS = tuple(f.name for f in fields(Scaling))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Ray Serve application builder: ``args`` are ServeSettings fields plus :class:`Scaling`'s (``replicas`` or
    ``autoscale``, ``gpus_per_replica``)."""
    args = dict(args)
    scaling = Scaling(**{name: args.pop(name) for name in SCALING_ARGS if name in args})
    settings = ServeSettings.from_env(**args)
    if not settings.models:
        raise ResnetkitError("Name at least one model to serve, e.g. 'resnetkit serve resnet50 --ray'.")
    for entry in settings.entries:
        entry.check()
    # --no-access-log: Ray Serve logs a line per request in every replica unless told not to
    logging = {"logging_config": {"enable_access_log": settings.access_log}}
    options = scaling.replica_options(settings)
    replicas = [ModelReplica.options(name=_deployment_name(i, text), **options, **logging).bind(text, settings)
                for i, text in enumerate(settings.models)]
    # Ray Serve's default of 5 requests in flight per replica would cap the ingress (it only awaits the models)
    return Ingress.options(name="ingress", max_ongoing_requests=settings.max_queue, **logging).bind(settings, replicas)


def _deployment_name(index: int, entry: str) -> str:
    return f"model{index}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ModelEntry.parse(entry).name or Path(entry).stem)


def app_args(settings: ServeSettings, scaling: Scaling) -> dict[str, Any]:
    """The builder's arguments for ``settings`` (what differs from the defaults) and ``scaling``."""
    defaults = ServeSettings.model_construct().model_dump()  # the defaults, without reading RESNETKIT_*
    args = {k: v for k, v in settings.model_dump().items() if v != defaults[k] and k not in ("host", "port")}
    args["models"] = ",".join(settings.models)
    return {**args, **scaling.args()}


def deploy_config(settings: ServeSettings, scaling: Scaling) -> dict[str, Any]:
    """A ``serve deploy`` config (checked against Ray's schema) for this application."""
    from ray.serve.schema import ServeDeploySchema

    scaling.replica_options(settings)  # a bad combination fails now, not on the cluster
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": app_args(settings, scaling)}],
    }
    ServeDeploySchema.model_validate(config)
    return config


def write_config(path: str, settings: ServeSettings, scaling: Scaling) -> None:
    import yaml

    write_text_atomic(path, yaml.safe_dump(deploy_config(settings, scaling), sort_keys=False))


def run_ray_serve(settings: ServeSettings, *, replicas: int | None = None, autoscale: str | None = None,
                  gpus_per_replica: float | None = None, config_out: str | None = None,
                  address: str | None = None) -> None:
    """Write the ``serve deploy`` config (``config_out``), or run the application until SIGINT/SIGTERM.

    Joins ``address``/``RAY_ADDRESS`` or starts a local Ray; on exit the application is deleted and a
    local Ray is stopped, so no process is left behind.
    """
    scaling = Scaling(replicas, autoscale, gpus_per_replica)
    if config_out:
        write_config(config_out, settings, scaling)
        print(f"Ray Serve config written to {config_out}; deploy it with: serve deploy {config_out}", file=sys.stderr)
        return
    application = build_app(app_args(settings, scaling))
    port = settings.port or _free_port(settings.host)
    with ray_runtime(address) as local_ray, _until_signal():
        scaling.check_cpus(settings, node_cpus())
        try:
            serve.start(http_options={"host": settings.host, "port": port})
            _run(application)
            print(f"resnetkit serve on Ray Serve at http://{settings.host}:{port} (page /, API docs /docs); "
                  "Ctrl-C stops it", file=sys.stderr, flush=True)
            while True:
                signal.pause()
        finally:
            serve.shutdown() if local_ray else serve.delete(APP_NAME)  # leave a shared cluster's other apps


def _run(application: serve.Application) -> None:
    try:
        serve.run(application, name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:  # Ray Serve's "Deploying application ... failed", e.g. a model file that fails to load
        raise ResnetkitError(f"Ray Serve could not start the models: {exc}".strip()) from None


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


@contextlib.contextmanager
def _until_signal() -> Iterator[None]:
    """Run the block until it ends or SIGINT/SIGTERM interrupts it (then leave quietly, exit status 0).

    Entered after ``ray.init``, which installs a SIGTERM handler of its own; that one is put back on exit.
    """
    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _free_port(host: str) -> int:
    sock = bind_socket(host, 0)
    port = sock.getsockname()[1]
    sock.close()
    return port
