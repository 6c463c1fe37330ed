"""The JSON API under /v1: list models, classify images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..deps import Hub, Stopwatch, classify_request, require_token
from ..schemas import ClassifyResponse, ErrorResponse, FileResult, ModelDetail, ModelList, PredictionOut

router = APIRouter(prefix="/v1", tags=["API"], dependencies=[Depends(require_token)],
                   responses={401: {"model": ErrorResponse, "description": "Token required (server started with --token)"}})

IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or several images as multipart field `file`, or one image as the raw body.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Model not served"},
    413: {"model": ErrorResponse, "description": "Body above --max-upload-mb, or more files than --max-files"},
    422: {"model": ClassifyResponse, "description": "No image could be classified (see each result's error), "
                                                   "or a bad parameter (then an ErrorResponse)"},
    503: {"model": ErrorResponse, "description": "Models still loading, queue full, or shutting down; retry"},
}


@router.get("/models", response_model=ModelList, summary="Served models with their metadata")
async def list_models(hub: Hub) -> ModelList:
    return ModelList(models=[m.info() for m in hub.models.values()])


@router.get("/models/{model}", response_model=ModelDetail, responses={404: ERRORS[404]},
            summary="One served model, with its class labels")
async def model_detail(model: str, hub: Hub) -> ModelDetail:
    return hub.get(model).detail()


@router.post("/models/{model}/classify", response_model=ClassifyResponse, responses=ERRORS,
             openapi_extra=IMAGE_BODY, summary="Top-k labels of one or several images")
async def classify(model: str, request: Request, hub: Hub,
                   top_k: Annotated[int, Query(ge=1, le=1000, description="Labels per image.")] = 5) -> JSONResponse:
    """Per-image errors (not an image, truncated, too many pixels, animated...) come back in each result;
    the status is 200 if at least one image was classified, 422 if none was."""
    clock = Stopwatch()
    uploads, outcomes = await classify_request(request, hub, model, top_k)
    results = [
        FileResult(filename=u.filename, predictions=[], error=str(o)) if isinstance(o, Exception)
        else FileResult(filename=u.filename, predictions=[PredictionOut(**vars(p)) for p in o])
        for u, o in zip(uploads, outcomes)
    ]
    body = ClassifyResponse(model=model, results=results, latency_ms=clock.ms)
    status = 200 if any(r.error is None for r in results) else 422
    return JSONResponse(body.model_dump(), status_code=status)
