"""Joining a Ray cluster, or starting a local Ray for one command and stopping it afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from types import ModuleType
from typing import Iterator

from ..core.device import DEVICE_WORDS, DeviceError
from ..core.errors import ResnetkitError
from ..core.extras import pip_hint

INSTALL_HINT = pip_hint("ray")
# Ray on Linux replaces a 127.0.0.1 node address by the machine's routable one, unless it believes it runs
# a single-node, non-cluster Ray (its setting for laptops); a local Ray for one command is exactly that.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
REACH_TIMEOUT_S = 5.0  # to open a TCP connection to a cluster's address before ray.init tries


def require_ray() -> ModuleType:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ResnetkitError(f"--ray needs Ray, which is not installed here. Install it with: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_runtime(address: str | None = None, **local_options: object) -> Iterator[bool]:
    """Use the Ray this process is already connected to, else join ``address`` or ``RAY_ADDRESS``,
    else start a local Ray on 127.0.0.1 (no dashboard; ``local_options`` such as ``num_cpus`` go to
    ``ray.init``) and stop it, and every process it started, on exit.

    Yields whether the Ray in use was started here.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        for name, value in LOOPBACK_ONLY.items():
            os.environ.setdefault(name, value)  # read when ray is first imported
    ray = require_ray()
    if ray.is_initialized():
        yield False
        return
    if target:
        _init(ray, address=target)
        try:
            yield False
        finally:
            ray.shutdown()
        return
    _init(ray, include_dashboard=False, **local_options)
    try:
        yield True
    finally:
        started = _own_processes()
        ray.shutdown()
        _stop(started)


def gpus_per_actor(device: str, asked: float | None, flag: str) -> float:
    """GPUs each model actor asks Ray for: ``asked`` (``flag`` names it in messages), else 1 with ``--device cuda``
    and 0 with ``auto`` or ``cpu``: decided by the word, not by this machine, whose driver may have no GPU while the
    cluster has. Combinations an actor could not run are refused here, before anything starts."""
    device = device.strip().lower()
    if device not in ("auto", "cpu", "cuda", "cuda:0"):
        if not device.startswith("cuda:"):
            raise DeviceError(f"--device '{device}' is not a device: use {DEVICE_WORDS}.")
        raise ResnetkitError(f"--device {device}: on Ray each actor sees only the GPUs Ray assigns it, numbered from "
                             f"cuda:0; use --device cuda (or auto) with {flag}.")
    gpus = asked if asked is not None else float(device.startswith("cuda"))
    if gpus < 0:
        raise ResnetkitError(f"{flag} must be zero or more (got {gpus:g}).")
    if device.startswith("cuda") and gpus == 0:
        raise ResnetkitError(f"--device {device} with {flag} 0: Ray shows an actor only the GPUs it asks for. Give "
                             f"{flag} (e.g. 0.5), or --device auto or cpu.")
    if device == "cpu" and gpus > 0:
        raise ResnetkitError(f"{flag} {gpus:g} with --device cpu would hold GPUs that no actor uses; drop one of them.")
    return gpus


def hide_unassigned_gpus() -> None:
    """In a Ray actor that asked for no GPU, hide the node's GPUs, so that ``--device auto`` means the CPU there.

    Ray gives an actor that asks for GPUs (``num_gpus``) its own in ``CUDA_VISIBLE_DEVICES``, but leaves the
    variable alone for one that asks for none (Ray 2.58 and 2.60; older versions emptied it): torch would see
    every GPU of the node and auto would put the model on one that Ray never assigned. Call it before anything
    in the actor asks torch about CUDA.
    """
    ray = require_ray()
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def assigned_cpus() -> int | None:
    """Whole CPUs Ray reserved for this actor (at least 1 if any), or None where it reserved none.

    A model runtime left to its default starts a thread per core of the node in every actor: with an actor per
    core, as ``--concurrency`` asks, that is cores x cores threads fighting over the node."""
    cpus = require_ray().get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, int(cpus)) if cpus else None


def node_cpus() -> list[float]:
    """The CPUs of each alive node of the Ray this process joined."""
    return [node["Resources"].get("CPU", 0.0) for node in require_ray().nodes() if node["Alive"]]


def _init(ray: ModuleType, **kwargs: object) -> None:
    address = kwargs.get("address")
    if isinstance(address, str):
        _check_reachable(address)
    try:
        ray.init(logging_level=logging.WARNING, configure_logging=True, **kwargs)
    except ConnectionError as exc:
        raise ResnetkitError(f"Could not join the Ray cluster at {kwargs.get('address')}: {exc}. Check the address "
                             "(ray status on a cluster node prints it) or leave --address out for a local Ray.") from None


def _check_reachable(address: str) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) where nothing listens: ``ray.init`` would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ResnetkitError(f"Could not join the Ray cluster at {address}: nothing answers there "
                             f"({exc.strerror or exc}, {REACH_TIMEOUT_S:g} s). Check the address (ray status on a "
                             "cluster node prints it) or leave --address out for a local Ray.") from None


def _own_processes() -> list:
    """The processes a local ``ray.init`` started here (GCS, raylet, agents, workers)."""
    import psutil

    return psutil.Process().children(recursive=True)


def _stop(processes: list, timeout: float = 15.0) -> None:
    """After ``ray.shutdown()``: end what is still running of ``processes`` (Ray's agents sometimes outlive it)."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)
