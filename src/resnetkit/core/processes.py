"""How resnetkit starts the processes that measure models: from a fork server that imported their code once.

Light on purpose (the standard library only): the console script (:mod:`resnetkit.launch`) starts ``bench``'s
fork server through here before it imports anything heavy.
"""

from __future__ import annotations

from multiprocessing import forkserver, get_all_start_methods, get_context
from multiprocessing.context import BaseContext

FORK_SERVER_PRELOAD = "resnetkit.choose.fork_server"  # what the server imports: bench's measuring code, torch, runtimes


def process_context() -> BaseContext:
    """How measuring processes start: ``forkserver`` where the platform has it (Linux, macOS), with
    :data:`FORK_SERVER_PRELOAD` preloaded, so each process forks from a server that imported torch once instead of
    importing it again (2 s each here), and ends without tearing the interpreter down (1 s each; multiprocessing
    ends forked processes with ``os._exit`` after its own clean-up); else ``spawn``. The server is a fresh
    interpreter that never touches CUDA, so the processes forked from it can."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload([FORK_SERVER_PRELOAD])
    return context


def start_fork_server() -> None:
    """Start the fork server now, where there is one: it imports its preload in its own process, on another core,
    while this one goes on importing (the first process it forks waits for that, no longer)."""
    if process_context().get_start_method() == "forkserver":
        forkserver.ensure_running()
