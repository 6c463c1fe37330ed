"""How resnetkit starts the processes that measure models (from a fork server that imported their code once), and
the process-wide memory setting of its frame-by-frame pipelines.

Light on purpose (the standard library only): the console script (:mod:`resnetkit.launch`) starts ``bench``'s
fork server through here before it imports anything heavy.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from multiprocessing import forkserver, get_all_start_methods, get_context
from multiprocessing.context import BaseContext

FORK_SERVER_PRELOAD = "resnetkit.choose.fork_server"  # what the server imports: bench's measuring code, torch, runtimes
# glibc's mallopt parameters and the values keep_freed_memory_for_reuse sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
REUSED_BLOCK_BYTES, KEPT_FREE_BYTES = 4 << 20, 32 << 20


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


@functools.cache
def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the system:
    blocks up to 4 MiB come from the heap rather than their own mmap, and up to 32 MiB of free heap stays mapped.
    True where it applied (glibc), False elsewhere; process-wide, once.

    A video frame allocates and frees a few MB (the decoded picture, its RGB copy, the model input). With glibc's
    defaults that memory went back to the system and was faulted in again for every frame, while OpenVINO's
    threads ran on the other core: the preprocessing of a 720p frame took 11-14 ms instead of 5 ms, and
    ``video-bench resnet18`` ran 38 instead of 57 frames/s (2-core Zen 4 VM, interleaved runs). This is what
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do, set from inside the process."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, REUSED_BLOCK_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES))
