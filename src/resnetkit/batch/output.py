"""Where ``predict`` writes: a folder of part files, each written atomically; the parts are the run's state.

``OUT`` (e.g. ``labels.parquet``) is a folder of ``part-000000.parquet``, ``part-000001.parquet``... as
pyarrow, pandas, DuckDB, Spark and Ray Data read one table. A part appears complete (written to a
hidden temporary file, fsynced, renamed) or not at all, so a kill at any moment loses at most the
rows not yet flushed, and ``--resume`` skips every source a part already holds: no row twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from ..core.errors import ResnetkitError
from ..core.fileio import as_utf8, atomic_write, write_text_atomic
from ..run.classify import ImageResult

FORMATS = ("parquet", "csv", "jsonl")
PREDICTION = pa.struct([("label", pa.string()), ("index", pa.int64()), ("score", pa.float64())])
SCHEMA = pa.schema([("source", pa.string()), ("label", pa.string()), ("score", pa.float64()),
                    ("index", pa.int64()), ("predictions", pa.list_(PREDICTION)), ("error", pa.string())])
RUN_FILE = "_run.json"  # what the run was started with; '_' and '.' files are not data for pyarrow datasets
_PART = re.compile(r"^part-(\d+)\.(parquet|csv|jsonl)$")


class OutputError(ResnetkitError):
    """The output folder cannot be written, or holds a run that does not match this one."""


def result_rows(results: Iterable[ImageResult]) -> pa.Table:
    """One row per result: top-1 ``label``/``score``/``index``, the top-k ``predictions``, ``error`` or null."""
    rows = []
    for r in results:
        top = r.predictions[0] if r.predictions else None
        rows.append({"source": as_utf8(r.source), "label": top and top.label, "score": top and top.score,
                     "index": top and top.index, "predictions": [vars(p) for p in r.predictions],
                     "error": r.error and as_utf8(" ".join(r.error.split()))})  # one line: CSV rows stay lines
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else the suffix of ``path`` (parquet without one)."""
    chosen = (fmt or Path(path).suffix.lstrip(".") or "parquet").lower()
    if chosen not in FORMATS:
        raise OutputError(f"Unknown output format '{chosen}' for {path}: use a .parquet, .csv or .jsonl name, "
                          "or --format.")
    return chosen


class PartStore:
    """A folder of atomically written part files in one format."""

    def __init__(self, path: str | Path, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = format_of(self.path, fmt)

    @classmethod
    def open(cls, path: str | Path, fmt: str | None, *, resume: bool, run_info: dict[str, Any]) -> "PartStore":
        """Create the folder, or reopen it with ``resume``; refuse to mix runs or formats."""
        store = cls(path, fmt)
        if store.path.exists() and not store.path.is_dir():
            raise OutputError(f"{store.path} is a file; predict writes a folder of part files there. "
                              "Choose a new -o name.")
        parts = store.parts()
        if parts and not resume:
            raise OutputError(f"{store.path} already holds {len(parts)} part file(s). Add --resume to continue "
                              "that run, or choose another -o.")
        store._check_run(run_info)
        for leftover in store.path.glob(".part-*.partial"):  # a part being written when the run was killed
            leftover.unlink()
        return store

    def _check_run(self, run_info: dict[str, Any]) -> None:
        run_file = self.path / RUN_FILE
        if run_file.is_file():
            before = json.loads(run_file.read_text())
            if before != run_info:
                raise OutputError(f"{self.path} was written by another run ({before}); this one is {run_info}. "
                                  "Resume with the same model and options, or choose another -o.")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_file, json.dumps(run_info, sort_keys=True))

    def discard(self) -> None:
        """Remove what :meth:`open` wrote into a folder that holds no part yet (a run that failed before its first)."""
        if self.parts():
            return
        (self.path / RUN_FILE).unlink(missing_ok=True)
        for leftover in self.path.glob(".part-*.partial"):
            leftover.unlink()
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        found = sorted(p for p in self.path.iterdir() if _PART.match(p.name))
        mixed = {p.suffix.lstrip(".") for p in found} - {self.format}
        if mixed:
            raise OutputError(f"{self.path} holds {', '.join(sorted(mixed))} parts, not {self.format}. "
                              "Resume in the same format, or choose another -o.")
        return found

    def write(self, table: pa.Table) -> Path:
        """Write ``table`` as the next part, atomically."""
        parts = self.parts()
        number = int(_PART.match(parts[-1].name).group(1)) + 1 if parts else 0
        target = self.path / f"part-{number:06d}.{self.format}"
        with atomic_write(target) as handle:
            _WRITERS[self.format](table, handle)
        return target

    def done_sources(self) -> set[str]:
        """Every source some part already holds."""
        return {s for part in self.parts() for s in _READERS[self.format](part).column("source").to_pylist()}

    def read(self) -> pa.Table:
        """All rows of all parts, in part order, with the column types of :data:`SCHEMA`."""
        return pa.concat_tables([_READERS[self.format](p) for p in self.parts()] or [SCHEMA.empty_table()])


def _write_parquet(table: pa.Table, handle) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, handle)


def _write_csv(table: pa.Table, handle) -> None:
    import pyarrow.csv as pcsv

    encoded = pa.array([json.dumps(p) for p in table.column("predictions").to_pylist()], pa.string())
    pcsv.write_csv(table.set_column(table.schema.get_field_index("predictions"), "predictions", encoded), handle)


def _write_jsonl(table: pa.Table, handle) -> None:
    handle.write("".join(json.dumps(row) + "\n" for row in table.to_pylist()).encode())


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path, schema=SCHEMA)


def _read_csv(path: Path) -> pa.Table:
    import pyarrow.csv as pcsv

    types = {f.name: (pa.string() if f.name == "predictions" else f.type) for f in SCHEMA}
    raw = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    rows = raw.to_pylist()
    for row in rows:
        row["predictions"] = json.loads(row["predictions"])
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _read_jsonl(path: Path) -> pa.Table:
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()], schema=SCHEMA)


_WRITERS = {"parquet": _write_parquet, "csv": _write_csv, "jsonl": _write_jsonl}
_READERS = {"parquet": _read_parquet, "csv": _read_csv, "jsonl": _read_jsonl}
