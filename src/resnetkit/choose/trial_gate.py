"""Give one of bench's measuring processes the machine to itself while it times ``auto``'s candidates.

Models build in up to one process per core at once, each with a helper process that builds and times
``auto``'s candidates. When one of them is about to time its candidates (``RunnerOptions.trial_gate``; building
them, exporting and converting included, happens before, beside the other builds), it pauses every other process
that is still building, helpers included (SIGSTOP), and resumes them (SIGCONT) when its timing is over: the
candidates are timed on a quiet machine, and no process sits idle waiting for a long build elsewhere to end. One
process times at a time, and the parent starts no process meanwhile. Where processes cannot be paused
(no SIGSTOP: Windows), bench builds one model at a time instead (:data:`CAN_PAUSE`).

Written here because no library pauses a set of processes around a critical section. Every
pause and resume happens while holding the states' lock, so a paused process never holds it.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

IDLE, BUSY, TIMING = range(3)
PIDS_PER_SLOT = 2  # a measuring process and its trial helper
CAN_PAUSE = hasattr(signal, "SIGSTOP")
SAFETY_SECONDS = 600.0  # a trial that hangs without its process dying holds the others this long at most


class TrialGate:
    """The states and pids of ``processes`` measuring processes (slots), shared with the spawned processes."""

    def __init__(self, context: Any, processes: int) -> None:
        self._trial = context.Lock()  # held by the process timing its candidates
        self._lock = context.Lock()  # guards the arrays
        self._states = context.RawArray("b", processes)
        self._pids = context.RawArray("i", processes * PIDS_PER_SLOT)

    def start(self, slot: int, start_processes: Callable[[], Sequence[int]]) -> None:
        """Parent: run ``start_processes`` (which starts the processes of ``slot`` and returns their pids, at most
        :data:`PIDS_PER_SLOT`) once no trial runs, so the new processes are known, and can be paused, before they
        take any CPU."""
        with _holding(self._trial), self._lock:
            pids = start_processes()
            self._pids[slot * PIDS_PER_SLOT:(slot + 1) * PIDS_PER_SLOT] = [*pids, *[0] * (PIDS_PER_SLOT - len(pids))]
            self._states[slot] = BUSY

    def idle(self, slot: int) -> None:
        """Process ``slot`` is built and waits for the parent."""
        with self._lock:
            self._states[slot] = IDLE

    def died(self, slot: int) -> None:
        """Parent: process ``slot`` ended without answering; if it died timing, resume the others and free the trial."""
        with self._lock:
            if self._states[slot] == TIMING:
                self._signal_building(slot, "SIGCONT")
                self._trial.release()
            self._states[slot] = IDLE

    @contextmanager
    def timing(self, slot: int) -> Iterator[None]:
        """Process ``slot`` times its candidates while the other building processes are paused."""
        with _holding(self._trial):
            with self._lock:
                self._states[slot] = TIMING
                self._signal_building(slot, "SIGSTOP")
            try:
                yield
            finally:
                with self._lock:
                    self._signal_building(slot, "SIGCONT")
                    self._states[slot] = BUSY

    def _signal_building(self, slot: int, name: str) -> None:
        """Send ``name`` to the processes of every slot but ``slot`` that is still building."""
        pids = self._pids[:]
        for other, state in enumerate(self._states[:]):
            if other != slot and state == BUSY:
                for pid in pids[other * PIDS_PER_SLOT:(other + 1) * PIDS_PER_SLOT]:
                    resume_or_pause(pid, name)


def resume_or_pause(pid: int, name: str) -> None:
    """Send ``SIGSTOP`` or ``SIGCONT`` to ``pid``, if this platform has it and the process still exists."""
    if CAN_PAUSE and pid:
        try:
            os.kill(pid, getattr(signal, name))
        except ProcessLookupError:
            pass


@contextmanager
def _holding(lock: Any) -> Iterator[None]:
    """``lock`` held inside the block, or after :data:`SAFETY_SECONDS` not (a hung holder delays, never blocks)."""
    acquired = lock.acquire(timeout=SAFETY_SECONDS)
    try:
        yield
    finally:
        if acquired:
            lock.release()
