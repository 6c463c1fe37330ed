"""What ``predict`` reads: folders, globs, text files of paths, Parquet/CSV tables with a path column."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..core.errors import ResnetkitError
from ..core.images import iter_image_paths

LIST_SUFFIXES = (".txt", ".lst")
TABLE_SUFFIXES = (".parquet", ".csv")
GLOB_CHARS = set("*?[")


class InputError(ResnetkitError):
    """An input of ``predict`` cannot be expanded into image paths."""


def resolve_inputs(data: Iterable[str | os.PathLike[str]], path_column: str = "path") -> list[str]:
    """The image paths named by ``data``, in order, each once.

    Each entry is a folder (walked, image files only), a glob (``photos/**/*.jpg``), a text file
    with one path per line (``.txt``/``.lst``), a Parquet or CSV table whose ``path_column`` holds
    paths, or an image file. Relative paths in lists and tables are relative to that file's folder.
    A named image that does not exist is kept: it becomes an error row, not a crash.
    """
    return list(dict.fromkeys(str(p) for entry in data for p in _expand(str(entry), path_column)))


def _expand(entry: str, path_column: str) -> Iterator[str]:
    path = Path(entry)
    if not path.exists() and GLOB_CHARS & set(entry):
        matches = sorted(glob.glob(entry, recursive=True))
        if not matches:
            raise InputError(f"The pattern '{entry}' matches no file. Quote it so the shell does not expand it, "
                             "and check the folder.")
        yield from (str(p) for p in iter_image_paths(matches))
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
        yield from (_relative_to(path, line) for line in lines if line and not line.startswith("#"))
    elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        yield from (_relative_to(path, p) for p in _table_column(path, path_column))
    elif not path.exists() and (not path.suffix or path.suffix.lower() in LIST_SUFFIXES + TABLE_SUFFIXES):
        raise InputError(f"No such file or folder: {entry}")
    else:
        yield from (str(p) for p in iter_image_paths([path]))


def _relative_to(listing: Path, entry: str) -> str:
    return entry if Path(entry).is_absolute() else str(listing.parent / entry)


def _table_column(path: Path, column: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names if path.suffix.lower() == ".parquet" else pcsv.read_csv(path).column_names
        if column not in names:
            raise InputError(f"{path} has no column '{column}' (columns: {', '.join(names)}). Name the column that "
                             "holds the image paths with --path-column.")
        table = pq.read_table(path, columns=[column]) if path.suffix.lower() == ".parquet" else pcsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} could not be read as a table: {exc}") from None
    return [str(v) for v in table.column(column).to_pylist() if v]
