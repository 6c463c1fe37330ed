"""Embedding files: Parquet (``source``, ``embedding`` list<float32>, ``error``) or ``.npy`` + ``.sources.json``.

Both keep the recipe (model, weights, layer, normalization) so ``similar`` embeds its queries
the same way. Files are written batch by batch into a temporary file that replaces the target
only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from ..backends.base import RunInfo
from ..core.errors import ResnetkitError
from ..core.fileio import as_utf8, atomic_write, check_writable, write_text_atomic
from ..core.images import ImagePaths, iter_image_paths
from .extract import Embeddings, load_extractor

META_KEY = b"resnetkit"
FORMATS = (".parquet", ".npy")

Batch = tuple[Sequence[str], np.ndarray, Sequence[str | None]]


class EmbeddingFileError(ResnetkitError):
    """An embedding file is missing, of an unknown kind or not written by resnetkit."""


def check_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as an embedding file name (before any work is done)."""
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise EmbeddingFileError(f"{target.name}: embedding files end in {' or '.join(FORMATS)} "
                                 "(Parquet with one row per image, or a NumPy array plus a .sources.json sidecar).")
    return target


def sidecar_path(npy: Path) -> Path:
    return npy.with_suffix(".sources.json")


def write_embeddings(path: str | os.PathLike[str], batches: Iterable[Batch], info: dict[str, Any], total: int) -> Path:
    """Stream ``batches`` to ``path`` (.parquet or .npy) atomically; ``total`` rows of ``info['dim']`` floats."""
    target = check_output(path)
    with atomic_write(target) as handle:
        if target.suffix.lower() == ".parquet":
            _write_parquet(handle, batches, info)
        else:
            sources, errors = _write_npy(handle, batches, total, info["dim"])
    if target.suffix.lower() == ".npy":
        write_text_atomic(sidecar_path(target), json.dumps({"resnetkit": info, "sources": sources, "errors": errors}))
    return target


@dataclass
class EmbedReport:
    """What ``embed_to_file`` wrote, and what computed it."""

    path: str
    rows: int
    failed: list[tuple[str, str]]  # (source, error) of the files that could not be embedded
    info: dict[str, Any]  # the file's recipe, with the facts of ``ran``
    ran: RunInfo

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "failed": self.failed, "info": self.info}


def embed_to_file(model: str | os.PathLike[str], paths: ImagePaths, output: str | os.PathLike[str],
                  *, batch_size: int = 16, workers: int | None = None, progress: bool | None = None, **options: Any) -> EmbedReport:
    """Embed images straight into ``output`` (.parquet or .npy), batch by batch; ``options`` as ``extract_features``."""
    target = check_writable(check_output(output))  # before the work, which would be lost
    sources = [str(p) for p in iter_image_paths(paths)]
    if not sources:
        raise EmbeddingFileError("No image files found in the given paths.")
    extractor = load_extractor(model, batch_size=batch_size, **options)
    failed: list[tuple[str, str]] = []

    def batches() -> Iterator[Batch]:
        for chunk, vectors, errors in extractor.batches(sources, batch_size, workers, progress):
            failed.extend((s, e) for s, e in zip(chunk, errors) if e)
            yield chunk, vectors, errors

    write_embeddings(target, batches(), extractor.info, len(sources))
    return EmbedReport(str(target), len(sources), failed, extractor.info, extractor.ran)


def _schema(info: dict[str, Any]):
    import pyarrow as pa

    fields = [("source", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())]
    return pa.schema(fields, metadata={META_KEY: json.dumps(info).encode()})


def _write_parquet(handle: IO[bytes], batches: Iterable[Batch], info: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(info)
    with pq.ParquetWriter(handle, schema) as writer:
        for sources, vectors, errors in batches:
            embeddings = [None if e else row for row, e in zip(vectors.tolist(), errors)]
            writer.write_table(pa.table({"source": [as_utf8(s) for s in sources], "embedding": embeddings,
                                         "error": [e and as_utf8(e) for e in errors]}, schema=schema))


def _write_npy(handle: IO[bytes], batches: Iterable[Batch], total: int, dim: int) -> tuple[list[str], list[str | None]]:
    np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)})
    sources: list[str] = []
    errors: list[str | None] = []
    for chunk, vectors, errs in batches:
        handle.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        sources += [as_utf8(s) for s in chunk]
        errors += [e and as_utf8(e) for e in errs]
    return sources, errors


def load_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """Read an embedding file written by ``resnetkit embed`` (rows with errors have NaN vectors)."""
    source = check_output(path)
    if source.is_dir():
        raise EmbeddingFileError(f"{source} is a folder, not an embedding file (a folder of part files is what "
                                 "'resnetkit predict' writes: labels, not embeddings). Give the file written by "
                                 "'resnetkit embed MODEL IMAGES -o FILE.parquet'.")
    if not source.is_file():
        raise EmbeddingFileError(f"No such embedding file: {source}. Write one with 'resnetkit embed MODEL IMAGES -o {source}'.")
    return _read_parquet(source) if source.suffix.lower() == ".parquet" else _read_npy(source)


def _read_parquet(path: Path) -> Embeddings:
    import pyarrow.parquet as pq

    with _unreadable(path):
        table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None or table.column_names[:3] != ["source", "embedding", "error"]:
        raise EmbeddingFileError(f"{path} is a Parquet file but not one written by 'resnetkit embed'.")
    info = json.loads(raw)
    column = table.column("embedding").combine_chunks()
    vectors = np.full((len(column), info["dim"]), np.nan, dtype=np.float32)
    vectors[column.is_valid().to_numpy(zero_copy_only=False)] = column.flatten().to_numpy().reshape(-1, info["dim"])
    return Embeddings(table.column("source").to_pylist(), vectors, table.column("error").to_pylist(), info)


def _read_npy(path: Path) -> Embeddings:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise EmbeddingFileError(f"{path} has no sidecar {sidecar.name} (sources and model); "
                                 "write both with 'resnetkit embed ... -o FILE.npy'.")
    with _unreadable(path):
        vectors = np.load(path, mmap_mode="r")
        data = json.loads(sidecar.read_text())
    if vectors.ndim != 2 or len(data.get("sources", ())) != len(vectors):
        raise EmbeddingFileError(f"{path} and {sidecar.name} do not match (rows vs sources); write them again.")
    return Embeddings(data["sources"], np.asarray(vectors, dtype=np.float32), data["errors"], data["resnetkit"])


@contextlib.contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        raise EmbeddingFileError(f"{path} could not be read ({exc}). Is it complete? Write it again with 'resnetkit embed'.") from None
