"""Liveness, readiness and Prometheus metrics (never behind the token: probes and scrapers use them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..deps import Hub
from ..schemas import Health, Readiness

router = APIRouter(tags=["Operations"])


@router.get("/healthz", response_model=Health, summary="The process is up and answering")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="200 once every model is loaded and warmed up, 503 before (or if loading failed)")
async def readyz(hub: Hub) -> JSONResponse:
    detail = None if hub.ready else hub.load_error or "loading and warming up the models"
    body = Readiness(ready=hub.ready, models=list(hub.models), detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if hub.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
async def metrics(hub: Hub) -> Response:
    payload, content_type = hub.metrics.render()
    return Response(payload, media_type=content_type)
