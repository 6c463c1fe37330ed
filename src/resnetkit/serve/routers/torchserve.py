"""TorchServe compatibility: its inference API (clients of its image classifier work unchanged) and
read-only views of its management API. Nothing here registers, loads or scales a model.

Errors (raised as ServeError anywhere, even in dependencies) are answered in TorchServe's shape by app.py."""

from __future__ import annotations

import os
import resource
import sys

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...core.device import Device
from ..deps import Hub, classify_request, require_token
from ..hub import ServedModel, ServeError
from ..metrics import TS_VERSION, gpu_memory
from ..schemas import (ONE_IMAGE_BODY, TorchServeError, TorchServeModelDescription, TorchServeModelList,
                       TorchServeModelRef, TorchServePing, TorchServeWorker)

TORCHSERVE_TOP_K = 5  # TorchServe's image_classifier handler returns the top 5
ERROR_TYPES = {400: "BadRequestException", 401: "UnauthorizedException", 404: "ModelNotFoundException",
               405: "MethodNotAllowedException", 413: "RequestEntityTooLargeException",
               415: "UnsupportedMediaTypeException", 422: "InvalidInputException", 501: "NotImplementedException",
               503: "ServiceUnavailableException"}
# and what lies under them: the routes whose errors take this shape (/explanations is TorchServe's route too)
PATHS = ("/ping", "/predictions", "/explanations", "/models")

router = APIRouter(tags=["TorchServe compatibility"])


def error_body(status: int, message: str) -> dict[str, int | str]:
    """TorchServe's error JSON, e.g. {"code": 404, "type": "ModelNotFoundException", "message": "..."}."""
    return TorchServeError(code=status, type=ERROR_TYPES.get(status, "InternalServerException"),
                           message=message).model_dump()


async def _check_version(model: str, version: str) -> None:
    """On the versioned paths only (a ?version= query elsewhere is ignored like any unknown one)."""
    if version != TS_VERSION:
        raise ServeError(404, f"Model version {version} does not exist for model {model}; "
                              f"each served model has the single version {TS_VERSION}.")


@router.get("/ping", response_model=TorchServePing, summary="TorchServe health check")
@router.head("/ping", include_in_schema=False)
async def ping(hub: Hub) -> JSONResponse:
    healthy = hub.ready
    return JSONResponse({"status": "Healthy" if healthy else "Unhealthy"}, status_code=200 if healthy else 503)


async def predictions(model: str, request: Request, hub: Hub) -> JSONResponse:
    """One image as the raw body (``curl -T img.jpg``) or as any multipart file field (``-F data=@img.jpg``)."""
    _, [outcome] = await classify_request(request, hub, model, TORCHSERVE_TOP_K, field=None, max_files=1)
    if isinstance(outcome, Exception):
        raise ServeError(422, str(outcome))
    return JSONResponse({p.label: p.score for p in outcome})


for _path in ("/predictions/{model}", "/predictions/{model}/{version}"):
    _versioned = "version" in _path
    for _method in ("POST", "PUT"):  # curl -T sends PUT; TorchServe accepts both
        router.add_api_route(_path, predictions, methods=[_method],
                             dependencies=[Depends(require_token)] + [Depends(_check_version)] * _versioned,
                             response_model=dict[str, float], openapi_extra=ONE_IMAGE_BODY,
                             responses={c: {"model": TorchServeError} for c in (401, 404, 413, 422, 503)},
                             operation_id=f"torchserve_predictions{'_version' * _versioned}_{_method.lower()}",
                             summary="TorchServe-style prediction: {label: probability} of the top 5")


@router.get("/models", response_model=TorchServeModelList, dependencies=[Depends(require_token)],
            summary="TorchServe management view (read-only): the served models")
async def list_models(hub: Hub) -> TorchServeModelList:
    return TorchServeModelList(models=[TorchServeModelRef(modelName=m.name, modelUrl=m.ref)
                                       for m in hub.models.values()])


@router.get("/models/{model}", response_model=list[TorchServeModelDescription], dependencies=[Depends(require_token)],
            responses={404: {"model": TorchServeError}}, summary="TorchServe management view (read-only): one model")
@router.get("/models/{model}/{version}", response_model=list[TorchServeModelDescription],
            dependencies=[Depends(require_token), Depends(_check_version)], include_in_schema=False)
async def describe_model(model: str, hub: Hub) -> JSONResponse:
    return JSONResponse([_describe(hub.get(model)).model_dump()])


def _describe(served: ServedModel) -> TorchServeModelDescription:
    batcher, device = served.batcher, served.classifier.ran.device
    worker = TorchServeWorker(id="1", startTime=served.started.isoformat(), status="READY",
                              memoryUsage=_rss_bytes(), pid=os.getpid(), gpu=device.is_cuda,
                              gpuUsage=_gpu_usage(device) if device.is_cuda and served.in_process else "N/A")
    return TorchServeModelDescription(
        modelName=served.name, modelUrl=served.ref, modelVersion=TS_VERSION, runtime=served.runtime,
        minWorkers=1, maxWorkers=1, batchSize=batcher.max_batch_size, maxBatchDelay=batcher.max_wait * 1000.0,
        workers=[worker])


def _gpu_usage(device: Device) -> str:
    """TorchServe's ``gpuUsage`` text for ``device``: its id and the memory PyTorch reserves there."""
    mib = gpu_memory(device)["reserved"] / 2**20
    return f"gpuId::{device.index} memory.used [MiB]::{mib:.0f} MiB"


def _rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
