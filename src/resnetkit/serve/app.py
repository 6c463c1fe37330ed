"""The application factory: routers, error handlers, metrics, and the models' lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi_offline import FastAPIOffline

from .. import __version__
from ..core.errors import ResnetkitError
from .hub import ModelHub, ServeError
from .metrics import MetricsMiddleware, ServeMetrics
from .routers import api, explain, health, kserve_v1, oip_v2, torchserve, web
from .schemas import REQUEST_BODY_SCHEMAS
from .settings import ServeSettings

DESCRIPTION = """Image classification with pretrained ResNet-family models, batched dynamically.

* `POST /v1/models/{model}/classify` — one or several images (multipart field `file`) or one raw image body.
* `POST /v2/models/{model}/infer` — Open Inference Protocol (KServe v2), images as a BYTES input;
  `POST /v1/models/{model}:predict` — KServe v1 with `{"instances": [{"b64": ...}]}`.
* `POST /predictions/{model}`, `GET /ping`, read-only `GET /models` — TorchServe-compatible.
* `GET /healthz`, `GET /readyz`, `GET /metrics` — operations.

Models are chosen when the server starts; no endpoint loads a model from a client-given path or URL."""


def create_app(settings: ServeSettings, *, on_load_error: Callable[[str], None] | None = None,
               hub_factory: Callable[..., ModelHub] = ModelHub) -> FastAPI:
    """A new app serving ``settings.models``; they load in the background once the app starts.

    ``on_load_error`` is called with the message if a model cannot be loaded (the CLI stops the server).
    ``hub_factory(settings, metrics, on_load_error)`` makes the hub (Ray Serve passes one whose models run remotely).
    """
    metrics = ServeMetrics()
    hub = hub_factory(settings, metrics, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(hub.start())
        yield
        if not loading.done():  # stopped while still loading: abandon the load
            loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await hub.close()

    app = FastAPIOffline(title="resnetkit serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.hub = hub
    for module in (api, kserve_v1, oip_v2, torchserve, explain, health, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.openapi = _with_request_body_schemas(app)  # type: ignore[method-assign]
    return app


def _with_request_body_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that also defines the models nested in schemas.json_body's request bodies (FastAPI
    only registers the models of the parameters it parses itself), still generated once and cached."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for name, schema in REQUEST_BODY_SCHEMAS.items():
                schemas.setdefault(name, schema)
        return app.openapi_schema

    return openapi


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory resnetkit.serve.app:create_app_from_env`` (settings from RESNETKIT_*)."""
    return create_app(ServeSettings.from_env())


async def _serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "1"}}.get(exc.status)
    return JSONResponse(_error_body(request, exc.status, str(exc)), status_code=exc.status, headers=headers)


def _is_kserve(request: Request) -> bool:
    path = request.url.path
    return path.startswith(oip_v2.PREFIX + "/") or path == oip_v2.PREFIX or path.endswith(":predict")


def _is_torchserve(request: Request) -> bool:
    return "/" + request.url.path.split("/")[1] in torchserve.PATHS


def _error_body(request: Request, status: int, message: str) -> dict[str, Any]:
    """KServe's protocols answer errors as {"error": ...}, TorchServe's as {"code", "type", "message"};
    resnetkit's own API as {"detail": ...}."""
    if _is_kserve(request):
        return {"error": message}
    return torchserve.error_body(status, message) if _is_torchserve(request) else {"detail": message}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Routing errors (404 no such path, 405 wrong method) in the route's protocol too."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(_error_body(request, exc.status_code, str(exc.detail)), status_code=exc.status_code,
                        headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen (a backend failure, a model that computes NaN) as a JSON 500 in the route's protocol,
    not Starlette's plain-text page; the traceback still goes to the server's log."""
    message = str(exc) if isinstance(exc, ResnetkitError) else f"Internal error ({type(exc).__name__}): {exc}"
    return JSONResponse(_error_body(request, 500, message), status_code=500)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 as one readable sentence, e.g. "top_k: Input should be greater than or equal to 1 (got '0')"."""
    assert isinstance(exc, RequestValidationError)
    messages = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
    status = 400 if _is_kserve(request) else 422  # KServe's protocols answer every bad request with 400
    return JSONResponse(_error_body(request, status, "; ".join(messages)), status_code=status)
