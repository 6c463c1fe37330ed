"""Fetch, verify, cache and load pretrained weights.

Files live in torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``) under the
published file name, so torchvision and resnetkit share downloads. The downloader is
written here rather than using ``torch.hub.download_url_to_file`` because that one has no
timeout and checks only a hash prefix; resnetkit checks the full SHA-256 where known.
A cached file is trusted as it is for loading; when it fails to load, or when ``weights pull``
or ``weights list`` looks at it, its hash says whether it is truncated or corrupt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import OutputError, WeightsError
from .fileio import atomic_write, check_writable
from .spec import WeightsSpec

MIRROR_ENV = "RESNETKIT_WEIGHTS_MIRROR"  # base URL that replaces the published folder
OFFLINE_ENV = "RESNETKIT_OFFLINE"  # "1": never touch the network
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """torch.hub's checkpoint folder, honouring ``TORCH_HOME``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(weights: WeightsSpec) -> Path:
    return cache_dir() / weights.file_name


def _writable_cached_path(weights: WeightsSpec) -> Path:
    """:func:`cached_path`, or a :class:`WeightsError` naming the cache folder and ``$TORCH_HOME`` if it cannot be
    written there (checked before any download, so a local folder problem is not blamed on the network)."""
    target = cached_path(weights)
    try:
        return check_writable(target)
    except OutputError:
        home = os.environ.get("TORCH_HOME")
        where = f"TORCH_HOME={home}" if home else "TORCH_HOME is not set"
        raise WeightsError(
            f"The weights cache folder {cache_dir()} cannot be written ({where}). Set TORCH_HOME to a folder you "
            "can write; the cache is $TORCH_HOME/hub/checkpoints."
        ) from None


def download_url(weights: WeightsSpec) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{weights.file_name}" if mirror else weights.url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_intact(weights: WeightsSpec) -> bool:
    """Whether the cached file of ``weights`` exists and has its published hash (the full SHA-256 where known,
    else the prefix in torch.hub's file name); reads the whole file."""
    path = cached_path(weights)
    return path.is_file() and sha256_of(path).startswith(weights.expected_hash)


def _check_hash(actual: str, weights: WeightsSpec, what: str) -> None:
    expected = weights.expected_hash
    if expected and not actual.startswith(expected):
        raise WeightsError(
            f"{what} has SHA-256 {actual[:16]}..., expected {expected[:16]}... for "
            f"{weights.file_name}. The file is truncated, corrupted or a different checkpoint; "
            "nothing was written to the cache."
        )


def pull_command(model: str, tag: str) -> str:
    """The command that downloads the weights ``tag`` of ``model`` into the cache (``--weights`` unless the default)."""
    from .zoo import get_spec

    option = "" if get_spec(model).default_weights.tag == tag else f" --weights {tag}"
    return f"resnetkit weights pull {model}{option}"


def _fix_hint(model: str, weights: WeightsSpec, url: str) -> str:
    return (
        f"Fix: run '{pull_command(model, weights.tag)}' on a machine with internet access, or download "
        f"{url} by other means and run 'resnetkit weights import {model} FILE' "
        f"(it will be placed at {cached_path(weights)})."
    )


def download(model: str, weights: WeightsSpec, *, progress: bool | None = None, timeout: float = 30.0) -> Path:
    """Download ``weights`` into the cache, verify the hash, and return the cached path.

    The file is streamed to a temporary file in the cache folder and renamed into place
    only after the hash matches. Proxies come from the usual ``*_proxy`` variables.
    """
    url = download_url(weights)
    if os.environ.get(OFFLINE_ENV) == "1":
        raise WeightsError(
            f"Weights for {model} ({weights.tag}) are not in the cache and {OFFLINE_ENV}=1 forbids "
            f"downloading them. {_fix_hint(model, weights, url)}"
        )
    target = _writable_cached_path(weights)
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with atomic_write(target) as handle:
                digest, received = _stream(response, handle, total, show, weights.file_name)
                if total and received != total:
                    raise WeightsError(
                        f"Download of {url} stopped after {received} of {total} bytes; nothing was "
                        f"written to the cache. {_fix_hint(model, weights, url)}"
                    )
                _check_hash(digest, weights, f"The file downloaded from {url}")
    except urllib.error.HTTPError as exc:
        raise WeightsError(
            f"Could not download weights for {model} ({weights.tag}): {url} answered HTTP "
            f"{exc.code} {exc.reason}. {_fix_hint(model, weights, url)}"
        ) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        if isinstance(exc, WeightsError):
            raise
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"Could not download weights for {model} ({weights.tag}) from {url}: {reason}. "
            f"Are you offline or behind a proxy (set https_proxy)? {_fix_hint(model, weights, url)}"
        ) from None
    return target


def _stream(response: Any, handle: Any, total: int, show: bool, label: str) -> tuple[str, int]:
    """Copy the response body into ``handle``; return (sha256 hex, bytes received)."""
    digest = hashlib.sha256()
    received = 0
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        disable=not show, transient=True,
    ) as bar:
        task = bar.add_task(label, total=total or None)
        while chunk := response.read(_CHUNK):
            handle.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(task, advance=len(chunk))
    return digest.hexdigest(), received


def import_file(model: str, weights: WeightsSpec, file: str | os.PathLike[str]) -> Path:
    """Verify a local file against the published hash and copy it into the cache."""
    source = Path(file)
    if not source.is_file():
        raise WeightsError(f"No such file: {source}. Give the path of the downloaded {weights.file_name}.")
    target = _writable_cached_path(weights)
    _check_hash(sha256_of(source), weights, str(source))
    with atomic_write(target) as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle, _CHUNK)
    return target


def ensure_cached(model: str, weights: WeightsSpec, *, progress: bool | None = None) -> Path:
    """The cached file for ``weights``, downloading it first if needed."""
    path = cached_path(weights)
    return path if path.is_file() else download(model, weights, progress=progress)


@dataclass(frozen=True)
class CachedWeights:
    model: str
    tag: str
    path: Path
    size_mb: float
    intact: bool  # the file has its published hash (False: truncated or corrupt; 'weights pull' replaces it)


def list_cached() -> list[CachedWeights]:
    """Zoo checkpoints present in the cache, each checked against its published hash."""
    from .zoo import get_spec, list_models

    found = []
    for name in list_models():
        for weights in get_spec(name).weights:
            path = cached_path(weights)
            if path.is_file():
                found.append(CachedWeights(name, weights.tag, path, path.stat().st_size / 1e6, is_intact(weights)))
    return found


def safe_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; refuses pickles that run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"No such file: {path}.") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _ends_early(path, exc):
            raise WeightsError(
                f"{path} ends early ({first_line}): the file is truncated (an interrupted download or copy?). "
                "Get the file again."
            ) from None
        raise WeightsError(
            f"Refused to load {path}: it is not a plain tensor checkpoint that loads with "
            f"weights_only=True ({first_line}). Files that need arbitrary code to unpickle are never "
            "executed; re-save the state dict with torch.save(model.state_dict(), path)."
        ) from None


def _ends_early(path: str | os.PathLike[str], exc: Exception) -> bool:
    """Whether ``torch.load`` failed because the file stops short: a legacy pickle (EOFError, "unexpected EOF"), or
    a zip checkpoint (torch.save's format) whose end, the zip directory, is missing."""
    if isinstance(exc, EOFError) or "unexpected EOF" in str(exc):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)
    except OSError:
        return False


def load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a ``.safetensors`` file or a torch checkpoint (loaded with ``weights_only=True``)."""
    if Path(path).suffix.lower() != ".safetensors":
        return extract_state_dict(safe_load(path))
    if not Path(path).is_file():
        raise WeightsError(f"No such file: {path}.")
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"Reading {path} needs the safetensors package: pip install 'resnetkit[hf]'.") from None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}). Is it truncated?") from None


def extract_state_dict(checkpoint: Any, key: str | None = None, strip_prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint, unwrapped and with any prefix removed."""
    if key is None and isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        key = "state_dict"
    state = checkpoint[key] if key else checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError("The checkpoint does not contain a state dict of tensors.")
    if not strip_prefix and state and all(k.startswith("module.") for k in state):
        strip_prefix = "module."  # saved from DataParallel / DDP
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    return state


def load_published(model: str, weights: WeightsSpec, *, progress: bool | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a published checkpoint, downloading it into the cache if needed."""
    path = ensure_cached(model, weights, progress=progress)
    try:
        checkpoint = safe_load(path)
    except WeightsError:
        if is_intact(weights):
            raise
        raise WeightsError(
            f"The cached weights {path} are truncated or corrupt: the file does not have the published SHA-256 "
            f"{weights.expected_hash[:16]}... (an interrupted download or copy?). Run "
            f"'{pull_command(model, weights.tag)}', which downloads it again and replaces it."
        ) from None
    return extract_state_dict(checkpoint, weights.state_dict_key, weights.strip_prefix)
