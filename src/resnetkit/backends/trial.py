"""The trial process of ``auto`` (see :mod:`resnetkit.backends.auto`): builds and times the candidates of a
pickled (source, candidates, options, seconds) job and gives back the median latencies, or the
:class:`~resnetkit.core.errors.ResnetkitError` that stopped it. As a program (``python -m``) it reads the job from
stdin and pickles the outcome to the file named by its one argument (not stdout: runtimes may print there)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from ..core.errors import ResnetkitError
from ..core.fileio import atomic_write
from .auto import measure
from .base import TrialGate


def run(payload: bytes, timing_gate: TrialGate | None = None) -> object:
    """The outcome of the pickled job, its candidates timed inside ``timing_gate``: the timings, or the error that
    stopped them."""
    try:
        return measure(*pickle.loads(payload), timing_gate=timing_gate)
    except ResnetkitError as exc:
        return exc


def main(result_path: str) -> None:
    outcome = run(sys.stdin.buffer.read())
    with atomic_write(Path(result_path)) as handle:
        pickle.dump(outcome, handle)


if __name__ == "__main__":
    main(sys.argv[1])
