"""Running the app under uvicorn: from the CLI (blocking, signals) or in a thread (tests, embedding)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from ..backends.base import get_backend
from ..core.device import resolve_device
from ..core.errors import ResnetkitError
from .app import create_app
from .settings import ServeSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("uvicorn.error")


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), or a clear error if it is taken."""
    # IPPROTO_TCP explicitly: asyncio only disables Nagle (TCP_NODELAY) on sockets whose proto says TCP,
    # and without it every keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # queue connections at once: the URL is logged before uvicorn's loop starts accepting
    except OSError as exc:
        sock.close()
        raise ResnetkitError(f"Cannot listen on {host}:{port}: {exc.strerror}. Choose another --port or --host.") from None
    return sock


class ServerThread:
    """A uvicorn server for ``settings`` on a socket bound now (port 0: a free port), run with :meth:`start`.

    ``run()`` blocks with uvicorn's signal handling (SIGINT/SIGTERM drain in-flight requests, then exit);
    ``start()``/``stop()`` run it in a background thread instead.
    """

    def __init__(self, settings: ServeSettings) -> None:
        if not settings.models:
            raise ResnetkitError("Name at least one model to serve, e.g. 'resnetkit serve resnet50'.")
        for entry in settings.entries:
            entry.check()
        device = resolve_device(settings.device)  # fail before the port opens
        if settings.backend is not None:
            backend = get_backend(settings.backend)
            backend.fit_device(device)
            if settings.precision is not None:
                backend.check_precision(settings.precision)
        self.settings = settings
        self.load_error: str | None = None
        self.app = create_app(settings, on_load_error=self._stop_on_load_error)
        self.socket = bind_socket(settings.host, settings.port)
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        config = uvicorn.Config(self.app, log_level="info", access_log=settings.access_log,
                                timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM or :meth:`stop`; raise the load error if a model could not be loaded."""
        self._serve()
        if self.load_error:
            raise ResnetkitError(self.load_error)

    def _serve(self) -> None:
        log.info("resnetkit serve on %s: page /, API docs /docs, metrics /metrics; /readyz is 200 once the models "
                 "are loaded", self.url)
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> "ServerThread":
        self._thread = threading.Thread(target=self._serve, name="resnetkit-serve", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every model is loaded and warmed (or raise the load error)."""
        deadline = time.monotonic() + timeout
        hub = self.app.state.hub
        while not hub.ready:
            if self.load_error or time.monotonic() > deadline:
                raise ResnetkitError(self.load_error or f"The server was not ready within {timeout:.0f} s.")
            time.sleep(0.02)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop, as on SIGTERM: stop accepting, finish in-flight requests, drain the batchers."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def _stop_on_load_error(self, message: str) -> None:
        self.load_error = message
        self.server.should_exit = True


def run_server(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM (blocking). Raises :class:`ResnetkitError` on bad settings or a failed load."""
    server = ServerThread(settings)
    if settings.host not in LOOPBACK and not settings.token:
        log.warning("listening on %s without --token: anyone who can reach this port can use the API", settings.host)
    server.run()
