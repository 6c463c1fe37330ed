"""TorchServe-compatible inference API: clients of TorchServe's image classifier work unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..deps import Hub, classify_request, require_token
from ..hub import ServeError
from ..schemas import TorchServeError, TorchServePing

TORCHSERVE_TOP_K = 5  # TorchServe's image_classifier handler returns the top 5
ERROR_TYPES = {404: "ModelNotFoundException", 413: "RequestEntityTooLargeException", 422: "InvalidInputException",
               503: "ServiceUnavailableException"}

router = APIRouter(tags=["TorchServe compatibility"])


@router.get("/ping", response_model=TorchServePing, summary="TorchServe health check")
async def ping(hub: Hub) -> JSONResponse:
    healthy = hub.ready
    return JSONResponse({"status": "Healthy" if healthy else "Unhealthy"}, status_code=200 if healthy else 503)


async def predictions(model: str, request: Request, hub: Hub) -> JSONResponse:
    """One image as the raw body (``curl -T img.jpg``) or as any multipart file field (``-F data=@img.jpg``)."""
    try:
        _, [outcome] = await classify_request(request, hub, model, TORCHSERVE_TOP_K, field=None, max_files=1)
        if isinstance(outcome, Exception):
            raise ServeError(422, str(outcome))
    except ServeError as exc:
        body = TorchServeError(code=exc.status, type=ERROR_TYPES.get(exc.status, "InternalServerException"),
                               message=str(exc))
        return JSONResponse(body.model_dump(), status_code=exc.status)
    return JSONResponse({p.label: p.score for p in outcome})


for _method in ("POST", "PUT"):  # curl -T sends PUT; TorchServe accepts both
    router.add_api_route("/predictions/{model}", predictions, methods=[_method], dependencies=[Depends(require_token)],
                         response_model=dict[str, float], operation_id=f"torchserve_predictions_{_method.lower()}",
                         responses={code: {"model": TorchServeError} for code in ERROR_TYPES},
                         summary="TorchServe-style prediction: {label: probability} of the top 5")
