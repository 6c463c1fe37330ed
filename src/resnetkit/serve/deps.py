"""What the routers share: the model hub, bearer-token auth, and the classify pipeline of one request."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated, Awaitable, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive

from ..core.errors import ImageError
from ..run.classify import Prediction
from .batcher import ServerBusyError
from .hub import ModelHub, ServedModel, ServeError
from .metrics import CLIENT_CLOSED
from .settings import ServeSettings
from .uploads import Upload, read_uploads

T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="Needed only when the server runs with --token / RESNETKIT_TOKEN.")


# Dependencies are ``async def``: FastAPI would run plain functions in a thread pool, a thread hop per call.
async def get_hub(request: Request) -> ModelHub:
    return request.app.state.hub


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.hub.settings


Hub = Annotated[ModelHub, Depends(get_hub)]
Settings = Annotated[ServeSettings, Depends(get_settings)]


async def require_token(settings: Settings,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """With a token configured, the request must carry ``Authorization: Bearer <token>``."""
    if settings.token is None:
        return
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), settings.token.encode()):
        raise ServeError(401, "Missing or wrong bearer token: send the header 'Authorization: Bearer <token>'.")


class Stopwatch:
    """Milliseconds since the request reached the handler."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000.0, 3)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and its queued images) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise ServeError(CLIENT_CLOSED, "The client closed the connection before the answer was ready.")
    return task.result()


async def _wait_for_disconnect(receive: Receive) -> None:
    """After the body has been read, the next ASGI message is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def classify_request(request: Request, hub: ModelHub, model: str, k: int, *, field: str | None = "file",
                           max_files: int | None = None) -> tuple[list[Upload], list[list[Prediction] | ImageError]]:
    """Check the model, read the images within the limits, classify them (cancelled if the client leaves)."""
    served = hub.get(model)
    settings = hub.settings
    uploads = await read_uploads(request, max_bytes=settings.max_upload_bytes,
                                 max_files=max_files or settings.max_files, field=field)
    return uploads, await classify_images(request, hub, served, [u.data for u in uploads], k)


async def classify_images(request: Request, hub: ModelHub, served: ServedModel, images: list[bytes],
                          k: int) -> list[list[Prediction] | ImageError]:
    """Top-``k`` of each encoded image (or the error that refused it), cancelled if the client leaves."""
    if len(images) > hub.settings.max_files:
        raise ServeError(413, f"{len(images)} images in one request; the limit is {hub.settings.max_files} "
                              "(--max-files). Split them over several requests.")
    clock = Stopwatch()
    try:
        results = await unless_disconnected(request, served.batcher.classify(images, k))
    except ServerBusyError as exc:
        raise ServeError(503, str(exc)) from None
    hub.metrics.observe_inference_request(served.name, clock.ms / 1000.0)
    return results
