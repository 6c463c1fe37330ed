"""KServe v1 prediction: ``POST /v1/models/{model}:predict`` with ``{"instances": [{"b64": ...}]}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from ..deps import Hub, classify_images, require_token
from ..hub import ServeError
from ..schemas import KServeV1Request, KServeV1Response, OipError, PredictionOut, json_body
from ..uploads import decode_base64, parse_json, read_body

router = APIRouter(tags=["KServe v1"], dependencies=[Depends(require_token)],
                   responses={code: {"model": OipError} for code in (400, 401, 404, 413, 503)})


@router.post("/v1/models/{model}:predict", response_model=KServeV1Response,
             openapi_extra=json_body(KServeV1Request), summary="Top-k of each base64 image instance")
async def predict(model: str, request: Request, hub: Hub,
                  top_k: Annotated[int, Query(ge=1, le=1000, description="Labels per image.")] = 5) -> KServeV1Response:
    """Instances are ``{"b64": "<base64 image file>"}`` (or bare base64 strings, ``{"data": ...}``,
    ``{"image": {"b64": ...}}``); an unreadable one fails the request."""
    served = hub.get(model)
    body = await read_body(request, hub.settings.max_upload_bytes)
    instances = parse_json(body, KServeV1Request, "a KServe v1 request",
                           '{"instances": [{"b64": "<base64 image file>"}]}').instances
    images = [decode_base64(i.encoded, f"Instance {n}") for n, i in enumerate(instances)]
    outcomes = await classify_images(request, hub, served, images, top_k)
    predictions = []
    for n, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            raise ServeError(400, f"Instance {n}: {outcome}")
        predictions.append([PredictionOut(**vars(p)) for p in outcome])
    return KServeV1Response(predictions=predictions)

