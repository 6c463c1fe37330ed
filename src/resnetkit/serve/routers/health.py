"""Liveness, readiness and Prometheus metrics (never behind the token: probes and scrapers use them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..deps import Hub
from ..schemas import Health, Readiness

router = APIRouter(tags=["Operations"])


@router.get("/healthz", response_model=Health, summary="The process is up and answering")
@router.head("/healthz", include_in_schema=False)  # HEAD too, as load balancers' and uptime monitors' probes send
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="200 once every model is loaded and warmed up, 503 before (or if loading failed)")
@router.head("/readyz", include_in_schema=False)
async def readyz(hub: Hub) -> JSONResponse:
    detail = None if hub.ready else hub.load_error or "loading and warming up the models"
    body = Readiness(ready=hub.ready, models=list(hub.models), detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if hub.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
@router.head("/metrics", include_in_schema=False)
async def metrics(hub: Hub) -> Response:
    payload, content_type = hub.metrics.render()
    return Response(payload, media_type=content_type)
