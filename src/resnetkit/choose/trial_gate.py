"""Keep bench's measuring processes off the CPU while one of them times ``auto``'s candidates.

Building a model (importing, exporting, converting, warming up) runs in up to one process per
core at once; ``auto``'s trials in one process (:func:`resnetkit.backends.auto.set_trial_gate`)
wait until every other measuring process is idle (built, waiting for the parent) or waiting to
time its own candidates, and no new process starts meanwhile. Written here because
``multiprocessing`` has no reader-writer lock: this is one condition variable over one state
per process.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

IDLE, BUSY, WAITING, TIMING = range(4)
SAFETY_SECONDS = 600.0  # a process that hangs without dying holds the others this long at most


class TrialGate:
    """The states of ``processes`` measuring processes (slots), shared with the spawned processes."""

    def __init__(self, context: Any, processes: int) -> None:
        self._changed = context.Condition()
        self._states = context.RawArray("b", processes)

    def starting(self, slot: int) -> None:
        """Parent: process ``slot`` is about to start (busy from its first import); waits while another times."""
        with self._changed:
            self._changed.wait_for(lambda: TIMING not in self._states[:], SAFETY_SECONDS)
            self._set(slot, BUSY)

    def idle(self, slot: int) -> None:
        """Process ``slot`` is built and waits for the parent (or, said by the parent, it died)."""
        with self._changed:
            self._set(slot, IDLE)

    @contextmanager
    def timing(self, slot: int) -> Iterator[None]:
        """Process ``slot`` times its candidates once no other process is busy or timing."""
        with self._changed:
            self._set(slot, WAITING)
            self._changed.wait_for(lambda: self._others_quiet(slot), SAFETY_SECONDS)
            self._set(slot, TIMING)
        try:
            yield
        finally:
            with self._changed:
                self._set(slot, BUSY)

    def _others_quiet(self, slot: int) -> bool:
        return all(state in (IDLE, WAITING) for other, state in enumerate(self._states[:]) if other != slot)

    def _set(self, slot: int, state: int) -> None:
        self._states[slot] = state
        self._changed.notify_all()
