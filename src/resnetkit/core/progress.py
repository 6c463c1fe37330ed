"""Progress bars on a terminal, silence otherwise (rich)."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

T = TypeVar("T")


def track(items: Iterable[T], total: int, description: str, enabled: bool | None = None,
          advance=lambda item: 1) -> Iterator[T]:
    """Yield ``items``, showing a bar on stderr when it is a terminal (or ``enabled``)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), disable=not show, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.update(task, advance=advance(item))
