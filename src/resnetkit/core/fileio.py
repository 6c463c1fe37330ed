"""Atomic file writes: write to a temporary file in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import OutputError


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread starts.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the mode a plain open() would give.
_FILE_MODE = 0o666 & ~_current_umask()


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path``, if a file can be written there (its folder made if missing); else an :class:`OutputError` saying
    why. Commands call it before long work whose result would otherwise be lost at the end."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"Cannot write {target}: it is a folder. Give a file name for the output.")
    existing = next(folder for folder in target.parents if folder.exists())
    try:  # a probe, as permissions alone do not tell (root may write anywhere but /proc)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".resnetkit-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    return target


def _cannot_write(target: Path, exc: OSError) -> OutputError:
    return OutputError(f"Cannot write {target}: {exc.strerror or exc}. Pick another output path.")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to ``path``; it replaces ``path`` only if the block succeeds. A path that cannot be
    written is an :class:`OutputError` before the block runs."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"Cannot write {target}: it is a folder. Give a file name for the output.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def as_utf8(text: str) -> str:
    """``text`` (a path, or a message naming one) as valid UTF-8: the bytes of a file name that are not UTF-8, which
    Python keeps as lone surrogates (``os.fsdecode``), become ``\\xNN`` escapes, since Arrow, CSV and JSON files
    hold UTF-8 (one such name would otherwise stop the whole file from being written)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
