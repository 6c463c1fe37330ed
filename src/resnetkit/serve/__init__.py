"""``resnetkit serve``: a web page and HTTP API over the model zoo, with dynamic batching.

The heavy parts (FastAPI, uvicorn) are imported on first use, so ``resnetkit --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "ServerThread", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ServerThread", "run_server"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
