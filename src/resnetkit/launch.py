"""The ``resnetkit`` console script and ``python -m resnetkit``: the CLI, with ``bench``'s fork server started first.

``bench`` measures each model in a process forked from a server that imports torch and the runtimes (3 s on a
2-core VM). Started here, before this process imports the CLI (another 3 s), the two imports run side by side:
``resnetkit bench --models resnet18`` took 5.7-8.9 s instead of 9.4-11.3 s (later runs, a 2-core Zen 4).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from .core.processes import start_fork_server

FORK_SERVER_COMMANDS = ("bench",)  # the commands that measure in processes from the fork server


def main() -> None:
    interrupted = _note_interrupts()
    try:
        args = sys.argv[1:]
        if _command(args) in FORK_SERVER_COMMANDS and "--help" not in args:
            start_fork_server()
        from .cli import main as cli_main

        cli_main()
    except Exception:  # a failure after Ctrl-C is the interruption, not a bug to show
        if not interrupted.is_set():
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except KeyboardInterrupt:  # before the CLI, which reports Ctrl-C itself, was imported
        sys.stderr.write("interrupted\n")
        sys.exit(130)


def _note_interrupts() -> threading.Event:
    """Ctrl-C raises KeyboardInterrupt as usual and is also noted: libraries interrupted in the middle of
    something (OpenVINO's import, Ray Data's threads) may turn it into an error of their own."""
    interrupted = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    return interrupted


def _command(args: list[str]) -> str | None:
    """The subcommand named on the command line: its first word that is not an option (the options before it,
    ``--version`` and ``--help``, take no value), if any."""
    return next((arg for arg in args if not arg.startswith("-")), None)
