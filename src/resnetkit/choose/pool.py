"""The measuring processes: one per model, started from a fork server with a helper beside it for auto's trial,
driven over a pipe, and ended cleanly whatever happens (Ctrl-C, SIGTERM, a process that dies).

No CUDA call happens in the fork server: it only imports this module (torch included), and each measuring
process resolves its device itself (:class:`~.worker.ModelWorker`), so CUDA is first touched in a fresh child.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Iterator, Sequence

from ..backends.auto import TrialFailed, in_new_interpreter
from ..backends.base import TrialGate as TrialGateHook
from ..backends.trial import run as run_trial
from ..core.errors import ResnetkitError
from ..core.processes import process_context
from .records import BenchConfig, Variant
from .trial_gate import TrialGate, resume_or_pause
from .worker import Entry, ModelWorker


class WorkerDied(ResnetkitError):
    """A measuring process ended without answering (crashed or killed)."""


@contextmanager
def _signal_handler(signum: int, handler: Any) -> Iterator[None]:
    """``handler`` for ``signum`` inside the block (main thread only: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_as_interrupt() -> AbstractContextManager[None]:
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C) while measuring, so both keep the results."""
    return _signal_handler(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block is raised as KeyboardInterrupt at its end: a measuring process
    being started is then always on the list of those to end. Raised in the middle of starting it, it
    left a process nobody ended, which printed a traceback once the bench had exited."""
    received: list[int] = []
    hold = lambda signum, frame: received.append(signum)  # noqa: E731
    with _signal_handler(signal.SIGINT, hold), _signal_handler(signal.SIGTERM, hold):
        yield
    if received:
        raise KeyboardInterrupt


def _sigint_ignored() -> AbstractContextManager[None]:
    """Processes started meanwhile ignore SIGINT from birth (an ignored signal stays ignored across
    exec, and Python leaves it so), so a Ctrl-C in the terminal reaches only the parent, which ends
    them cleanly, and no child prints a KeyboardInterrupt traceback while importing."""
    return _signal_handler(signal.SIGINT, signal.SIG_IGN)


class LocalWorker:
    """A :class:`ModelWorker` in this process, behind the same interface as :class:`ProcessWorker`."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig) -> None:
        self.model = model
        self.worker = ModelWorker(model, variants, config)
        self.pid = os.getpid()

    def entries(self) -> list[Entry]:
        return self.worker.entries

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def close(self, wait: bool = True) -> None:
        self.worker.close()


def _serve(conn: Any, model: str, variants: Sequence[Variant], config: BenchConfig, gate: TrialGate, slot: int,
           trial_conn: Any) -> None:
    """Entry point of a measuring process: build, answer ``(method, args)`` requests, stop on None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends this process
    # ... with SIGTERM, as a normal exit: exit handlers then release what the libraries hold (e.g. the
    # multiprocessing lock tqdm makes during torch.export), which a plain SIGTERM would leave for
    # Python's resource tracker to report as leaked
    signal.signal(signal.SIGTERM, _exit_now)
    trial_helper = _TrialHelper(trial_conn)
    worker = ModelWorker(model, variants, config, trial_gate=lambda: gate.timing(slot), trial_process=trial_helper)
    trial_helper.close()  # a helper still waiting (auto's choice was cached) ends
    gate.idle(slot)
    conn.send(worker.entries)
    while (request := conn.recv()) is not None:
        method, args = request
        conn.send(getattr(worker, method)(*args))


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _serve_trial(conn: Any) -> None:
    """Entry point of a measuring process's trial helper: run the one trial job auto sends, if any, and answer.
    Forked from the fork server, it starts with torch and the runtimes imported but nothing run: as fresh as a
    new interpreter, without its 3.4 s of imports. It builds the candidates beside the other builds, then asks
    its measuring process to take the trial gate (:func:`_gate_held_by_asker`) before it times them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        payload = conn.recv_bytes()
    except EOFError:  # auto's choice was cached: nothing to time
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)  # runtimes may print; like a new interpreter's trial, this one's stdout goes nowhere
    try:
        outcome = run_trial(payload, timing_gate=lambda: _gate_held_by_asker(conn))
    except Exception as exc:  # noqa: BLE001 - a runtime's crash becomes auto's clear error, not a traceback here
        outcome = TrialFailed(f"{type(exc).__name__}: {exc}")
    try:
        conn.send(outcome)
    except OSError:  # its measuring process ended meanwhile (bench interrupted while this one built): no one to tell
        pass


BUILT, TIME = "built", "time"  # the trial helper's candidates are built; its measuring process holds the gate


@contextmanager
def _gate_held_by_asker(conn: Any) -> Iterator[None]:
    """The trial helper's side of the trial gate: the measuring process that sent the job takes the gate when
    told the candidates are built, and holds it until the outcome comes back."""
    conn.send(BUILT)
    conn.recv()
    yield


class _TrialHelper:
    """A measuring process's way to its trial helper (:func:`_serve_trial`): auto's first trial there, any later
    one (a second variant to tune) in a new interpreter, auto's own way."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self, payload: bytes, timing_gate: TrialGateHook | None = None) -> object:
        if self.conn.closed:
            return in_new_interpreter(payload, timing_gate)
        try:
            self.conn.send_bytes(payload)
            answer = self.conn.recv()
            if answer != BUILT:  # the error that stopped the building
                return answer
            with (timing_gate or nullcontext)():
                self.conn.send(TIME)
                return self.conn.recv()
        except (EOFError, OSError):
            raise TrialFailed("its helper process ended without answering") from None
        finally:
            self.close()

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()


class ProcessWorker:
    """A :class:`ModelWorker` in a fresh process (see :func:`process_context`), driven over a pipe."""

    def __init__(self, model: str, variants: Sequence[Variant], config: BenchConfig, gate: TrialGate,
                 slot: int) -> None:
        context = process_context()
        self.model = model
        self.conn, child = context.Pipe()
        trial_ends = context.Pipe()  # the measuring process's end, its trial helper's end
        self.process = context.Process(target=_serve, args=(child, model, variants, config, gate, slot, trial_ends[0]),
                                       daemon=True)
        self.trial_helper = context.Process(target=_serve_trial, args=(trial_ends[1],), daemon=True)
        self.gate, self.slot = gate, slot
        with _sigint_ignored():
            gate.start(slot, self._start_processes)
        for end in (child, *trial_ends):
            end.close()

    def _start_processes(self) -> tuple[int, int]:
        self.trial_helper.start()
        self.process.start()
        return self.pid, self.trial_helper.pid or 0

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def _receive(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            self.gate.died(self.slot)  # a dead process keeps no one paused or waiting to time
            raise WorkerDied(f"the process measuring {self.model} ended (exit code {self.process.exitcode}) "
                             "without answering; its variants are left out. Run it alone to see why; from a "
                             "Python script, call bench under 'if __name__ == \"__main__\":' (its measuring "
                             "processes import the script, as multiprocessing's do).") from None

    def entries(self) -> list[Entry]:
        return self._receive()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        return self._receive()

    def close(self, wait: bool = True) -> None:
        """Ask the process to stop and wait for it (``wait``), else (or if it does not) end it with
        SIGTERM, which it turns into a normal exit, and SIGKILL as a last resort (resumed, in case another
        process's trial paused it)."""
        if wait and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(5)
        for end in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                end()
                resume_or_pause(self.pid, "SIGCONT")
                self.process.join(5)
        if self.trial_helper.is_alive():  # the measuring process died while its helper timed or waited
            self.trial_helper.kill()
            self.trial_helper.join(5)
        self.conn.close()


Worker = LocalWorker | ProcessWorker
