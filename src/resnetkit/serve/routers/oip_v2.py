"""Open Inference Protocol (KServe v2): health, metadata and /infer with images as a BYTES input.

Images travel as base64 strings in the JSON ``data`` of one BYTES input, or raw with the binary
data extension (``Inference-Header-Content-Length``; each element a 4-byte little-endian length,
then the bytes). The outputs ``label`` (BYTES), ``score`` (FP32) and ``index`` (INT64) have shape
[N, k]; ``parameters.top_k`` sets k (default 5). Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import struct
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ... import __version__
from ...run.classify import Prediction
from ..deps import Hub, classify_images, require_token
from ..hub import ServeError
from ..schemas import (OipError, OipInferenceRequest, OipInferenceResponse, OipLive, OipModelMetadata,
                       OipModelReady, OipReady, OipRequestInput, OipResponseOutput, OipServerMetadata,
                       OipTensorMetadata)
from ..uploads import decode_base64, parse_json, read_body

PREFIX = "/v2"
DEFAULT_TOP_K = 5
BINARY_HEADER = "inference-header-content-length"
INPUT = "image"
VERSION = "1"  # each served model has one version; the protocol's /versions/{version} paths name it
OUTPUTS = {"label": "BYTES", "score": "FP32", "index": "INT64"}
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OipError} for code in (400, 401, 404, 413, 503)}

router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (KServe v2)"], responses=ERRORS)


@router.get("", response_model=OipServerMetadata, summary="Server metadata")
async def server_metadata() -> OipServerMetadata:
    return OipServerMetadata(name="resnetkit", version=__version__, extensions=["binary_tensor_data"])


@router.get("/health/live", response_model=OipLive, summary="200 while the process answers")
@router.head("/health/live", include_in_schema=False)
async def live() -> OipLive:
    return OipLive(live=True)


@router.get("/health/ready", response_model=OipReady, summary="200 once every model is loaded, 400 before")
@router.head("/health/ready", include_in_schema=False)
async def ready(hub: Hub) -> JSONResponse:
    return JSONResponse(OipReady(ready=hub.ready).model_dump(), status_code=200 if hub.ready else 400)


@router.get("/models/{model}/ready", response_model=OipModelReady, summary="200 if the model is ready, 400 before")
@router.get("/models/{model}/versions/{version}/ready", response_model=OipModelReady, include_in_schema=False)
async def model_ready(model: str, hub: Hub, version: str | None = None) -> JSONResponse:
    _check_version(model, version)
    if hub.ready:
        hub.get(model)  # 404 for a model that is not served
    ok = model in hub.models
    return JSONResponse(OipModelReady(name=model, ready=ok).model_dump(), status_code=200 if ok else 400)


@router.get("/models/{model}", response_model=OipModelMetadata, dependencies=[Depends(require_token)],
            summary="Model metadata: one BYTES input, three [N, k] outputs")
@router.get("/models/{model}/versions/{version}", response_model=OipModelMetadata,
            dependencies=[Depends(require_token)], include_in_schema=False)
async def model_metadata(model: str, hub: Hub, version: str | None = None) -> OipModelMetadata:
    _check_version(model, version)
    served = hub.get(model)
    return OipModelMetadata(
        name=served.name, versions=[VERSION], platform=f"resnetkit/{served.runtime}",
        inputs=[OipTensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[OipTensorMetadata(name=name, datatype=kind, shape=[-1, -1]) for name, kind in OUTPUTS.items()],
    )


@router.post("/models/{model}/infer", response_model=OipInferenceResponse, dependencies=[Depends(require_token)],
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": OipInferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
             summary="Top-k of each image of a BYTES input")
@router.post("/models/{model}/versions/{version}/infer", response_model=OipInferenceResponse,
             dependencies=[Depends(require_token)], include_in_schema=False)
async def infer(model: str, request: Request, hub: Hub, version: str | None = None) -> JSONResponse:
    """Every image must be readable: one that is not fails the request with 400 and names its position."""
    _check_version(model, version)
    served = hub.get(model)
    body = await read_body(request, hub.settings.max_upload_bytes)
    payload, images = parse_request(body, request.headers.get(BINARY_HEADER))
    k, wanted = _top_k(payload.parameters or {}), _wanted(payload)
    outcomes = await classify_images(request, hub, served, images, k)
    for position, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            raise ServeError(400, f"Image {position} of input '{payload.inputs[0].name}': {outcome}")
    rows: list[list[Prediction]] = outcomes  # type: ignore[assignment]
    response = OipInferenceResponse(model_name=served.name, id=payload.id, outputs=_outputs(rows, wanted))
    return JSONResponse(response.model_dump(exclude_none=True))


def _check_version(model: str, version: str | None) -> None:
    if version not in (None, VERSION):
        raise ServeError(404, f"Model {model} has no version {version!r}; each served model has the single "
                              f"version {VERSION} (or leave /versions/... out).")


def parse_request(body: bytes, json_length: str | None) -> tuple[OipInferenceRequest, list[bytes]]:
    """The request and its images (base64 JSON data, or the binary data extension's raw section)."""
    binary = b""
    if json_length is not None:
        if not json_length.isdigit() or int(json_length) > len(body):
            raise ServeError(400, f"{BINARY_HEADER}: {json_length!r} is not a length within the body "
                                  f"({len(body)} bytes).")
        body, binary = body[:int(json_length)], body[int(json_length):]
    payload = parse_json(body, OipInferenceRequest, "an inference request",
                         '{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
                         '"data": ["<base64 of the image file>"]}]}')
    if len(payload.inputs) != 1:
        raise ServeError(400, f"Send exactly one input holding the images (got {len(payload.inputs)}).")
    return payload, _images(payload.inputs[0], binary)


def _images(tensor: OipRequestInput, binary: bytes) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise ServeError(400, f"Input '{tensor.name}' has datatype {tensor.datatype}; send the image files "
                              "(JPEG, PNG...) as a BYTES input, base64-encoded in JSON.")
    if tensor.name != INPUT:
        raise ServeError(400, f"Unknown input '{tensor.name}': the model's one input is '{INPUT}' (BYTES); "
                              f"name the input '{INPUT}'.")
    size = (tensor.parameters or {}).get("binary_data_size")
    images = _unpack_bytes(binary, size) if size is not None else [_b64(v, i) for i, v in enumerate(_flat(tensor))]
    count = 1
    for dim in tensor.shape:
        count *= dim
    if count != len(images) or not images:
        raise ServeError(400, f"Input '{tensor.name}' has shape {tensor.shape} but holds {len(images)} images; "
                              f"use shape [{len(images)}] (at least one image).")
    return images


def _flat(tensor: OipRequestInput) -> list[Any]:
    if tensor.data is None:
        raise ServeError(400, f"Input '{tensor.name}' has no data: give base64 strings in 'data', or "
                              "parameters.binary_data_size with the binary data extension.")
    flat: list[Any] = []
    stack = list(reversed(tensor.data))
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _b64(value: Any, position: int) -> bytes:
    if not isinstance(value, str):
        raise ServeError(400, f"Element {position} of the BYTES input is a {type(value).__name__}; "
                              "send each image as a base64 string.")
    return decode_base64(value, f"Element {position} of the BYTES input")


def _unpack_bytes(binary: bytes, size: Any) -> list[bytes]:
    """The BYTES elements of the binary data extension: each a 4-byte little-endian length, then its bytes."""
    if not isinstance(size, int) or size != len(binary):
        raise ServeError(400, f"parameters.binary_data_size is {size!r} but {len(binary)} bytes follow the JSON.")
    images, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise ServeError(400, "The binary BYTES data ends inside an element's 4-byte length prefix.")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise ServeError(400, f"A binary BYTES element claims {length} bytes; only {len(binary) - offset} remain.")
        images.append(binary[offset:offset + length])
        offset += length
    return images


def _top_k(parameters: dict[str, Any]) -> int:
    k = parameters.get("top_k", DEFAULT_TOP_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise ServeError(400, f"parameters.top_k must be an integer from 1 to 1000 (got {k!r}).")
    return k


def _wanted(payload: OipInferenceRequest) -> list[str]:
    if payload.outputs is None:
        return list(OUTPUTS)
    names = [o.name for o in payload.outputs]
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise ServeError(400, f"Unknown output {', '.join(unknown)}; this model has outputs {', '.join(OUTPUTS)}.")
    return names


def _outputs(rows: list[list[Prediction]], names: list[str]) -> list[OipResponseOutput]:
    shape = [len(rows), len(rows[0])]
    return [OipResponseOutput(name=name, datatype=OUTPUTS[name], shape=shape,
                              data=[getattr(p, name) for row in rows for p in row]) for name in names]
