"""The trial process of ``auto`` (see :mod:`resnetkit.backends.auto`): reads a pickled (source, candidates,
options, seconds) job from stdin, builds and times the candidates, and pickles the median latencies (or the
:class:`~resnetkit.core.errors.ResnetkitError` that stopped it) to the file named by its one argument.
The result goes to a file, not stdout, because runtimes may print there."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from ..core.errors import ResnetkitError
from ..core.fileio import atomic_write
from .auto import measure


def main(result_path: str) -> None:
    job = pickle.loads(sys.stdin.buffer.read())
    try:
        outcome: object = measure(*job)
    except ResnetkitError as exc:
        outcome = exc
    with atomic_write(Path(result_path)) as handle:
        pickle.dump(outcome, handle)


if __name__ == "__main__":
    main(sys.argv[1])
