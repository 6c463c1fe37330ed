"""Open Inference Protocol (KServe v2): health, metadata and /infer with images as a BYTES input.

Images travel as base64 strings in the JSON ``data`` of one BYTES input, or raw with the binary
data extension (``Inference-Header-Content-Length``; each element a 4-byte little-endian length,
then the bytes). The outputs ``label`` (BYTES), ``score`` (FP32) and ``index`` (INT64) have shape
[N, k]; ``parameters.top_k`` sets k (default 5). With Triton's classification extension an output
``{"name": "score", "parameters": {"classification": n}}`` comes back as BYTES "<score>:<index>:<label>"
of shape [N, n]. Errors are ``{"error": "..."}``.
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
                       OipModelReady, OipReady, OipRequestInput, OipRequestOutput, OipResponseOutput,
                       OipServerMetadata, OipTensorMetadata, json_body)
from ..uploads import decode_base64, parse_json, read_body

PREFIX = "/v2"
DEFAULT_TOP_K = 5
BINARY_HEADER = "inference-header-content-length"
INPUT = "image"
VERSION = "1"  # each served model has one version; the protocol's /versions/{version} paths name it
OUTPUTS = {"label": "BYTES", "score": "FP32", "index": "INT64"}
CLASSIFIED = "score"  # the output the classification extension may turn into "<score>:<index>:<label>" strings
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OipError} for code in (400, 401, 404, 413, 503)}

router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (KServe v2)"], responses=ERRORS)


@router.get("", response_model=OipServerMetadata, summary="Server metadata")
async def server_metadata() -> OipServerMetadata:
    return OipServerMetadata(name="resnetkit", version=__version__, extensions=["binary_tensor_data", "classification"])


@router.get("/health/live", response_model=OipLive, summary="200 while the process answers")
@router.head("/health/live", include_in_schema=False)
async def live() -> OipLive:
    return OipLive(live=True)


@router.get("/health/ready", response_model=OipReady, summary="200 once every model is loaded, 400 before")
@router.head("/health/ready", include_in_schema=False)
async def ready(hub: Hub) -> JSONResponse:
    return JSONResponse(OipReady(ready=hub.ready).model_dump(), status_code=200 if hub.ready else 400)


async def _check_version(model: str, version: str) -> None:
    """On the /versions/{version} paths only (a ?version= query elsewhere is ignored like any unknown one)."""
    if version != VERSION:
        raise ServeError(404, f"Model {model} has no version {version!r}; each served model has the single "
                              f"version {VERSION} (or leave /versions/... out).")


@router.get("/models/{model}/ready", response_model=OipModelReady, summary="200 if the model is ready, 400 before")
@router.get("/models/{model}/versions/{version}/ready", response_model=OipModelReady, include_in_schema=False,
            dependencies=[Depends(_check_version)])
async def model_ready(model: str, hub: Hub) -> JSONResponse:
    if hub.ready:
        hub.get(model)  # 404 for a model that is not served
    ok = model in hub.models
    return JSONResponse(OipModelReady(name=model, ready=ok).model_dump(), status_code=200 if ok else 400)


@router.get("/models/{model}", response_model=OipModelMetadata, dependencies=[Depends(require_token)],
            summary="Model metadata: one BYTES input, three [N, k] outputs")
@router.get("/models/{model}/versions/{version}", response_model=OipModelMetadata,
            dependencies=[Depends(require_token), Depends(_check_version)], include_in_schema=False)
async def model_metadata(model: str, hub: Hub) -> OipModelMetadata:
    served = hub.get(model)
    return OipModelMetadata(
        name=served.name, versions=[VERSION], platform=f"resnetkit/{served.runtime}",
        inputs=[OipTensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[OipTensorMetadata(name=name, datatype=kind, shape=[-1, -1]) for name, kind in OUTPUTS.items()],
    )


@router.post("/models/{model}/infer", response_model=OipInferenceResponse, dependencies=[Depends(require_token)],
             openapi_extra=json_body(OipInferenceRequest), summary="Top-k of each image of a BYTES input")
@router.post("/models/{model}/versions/{version}/infer", response_model=OipInferenceResponse,
             dependencies=[Depends(require_token), Depends(_check_version)], include_in_schema=False)
async def infer(model: str, request: Request, hub: Hub) -> JSONResponse:
    """Every image must be readable: one that is not fails the request with 400 and names its position."""
    served = hub.get(model)
    body = await read_body(request, hub.settings.max_upload_bytes)
    payload, images = parse_request(body, request.headers.get(BINARY_HEADER), request.headers.get("content-type"))
    wanted = _wanted(payload)
    k = max([_top_k(payload.parameters or {}), *(n for n in wanted.values() if n)])
    outcomes = await classify_images(request, hub, served, images, k)
    for position, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            raise ServeError(400, f"Image {position} of input '{payload.inputs[0].name}': {outcome}")
    rows: list[list[Prediction]] = outcomes  # type: ignore[assignment]
    response = OipInferenceResponse(model_name=served.name, id=payload.id, outputs=_outputs(rows, wanted))
    return JSONResponse(response.model_dump(exclude_none=True))


def parse_request(body: bytes, json_length: str | None,
                  content_type: str | None = None) -> tuple[OipInferenceRequest, list[bytes]]:
    """The request and its images (base64 JSON data, or the binary data extension's raw section)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if json_length is None and media.startswith(("multipart/", "image/")) and not body.lstrip().startswith(b"{"):
        raise ServeError(400, f"This route takes a JSON inference request, not {media}; send raw or multipart "
                              "images to /predictions/{model} or /v1/models/{model}/classify instead.")
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
    if isinstance(size, bool) or not isinstance(size, int):
        raise ServeError(400, f"parameters.binary_data_size must be an integer (got {size!r}).")
    if size != len(binary):
        raise ServeError(400, f"parameters.binary_data_size is {size} but {len(binary)} bytes follow the JSON.")
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


def _wanted(payload: OipInferenceRequest) -> dict[str, int | None]:
    """The outputs to answer, each with its classification count (None: the plain tensor)."""
    if payload.outputs is None:
        return dict.fromkeys(OUTPUTS)
    unknown = sorted({o.name for o in payload.outputs} - set(OUTPUTS))
    if unknown:
        raise ServeError(400, f"Unknown output {', '.join(unknown)}; this model has outputs {', '.join(OUTPUTS)}.")
    return {o.name: _class_count(o) for o in payload.outputs}


def _class_count(output: OipRequestOutput) -> int | None:
    count = (output.parameters or {}).get("classification")
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise ServeError(400, f"Output '{output.name}': parameters.classification must be an integer from 1 to 1000 "
                              f"(got {count!r}).")
    if output.name != CLASSIFIED:
        raise ServeError(400, f"Output '{output.name}': parameters.classification applies to the '{CLASSIFIED}' "
                              "output only.")
    return count


def _outputs(rows: list[list[Prediction]], wanted: dict[str, int | None]) -> list[OipResponseOutput]:
    """Each wanted output as [N, k]; a classified one as Triton's "<score>:<index>:<label>" strings of its top n
    (``f"{score:f}"`` is C++'s std::to_string, which Triton uses), most probable first."""
    outputs = []
    for name, count in wanted.items():
        top = [row[:count] for row in rows]
        data = [f"{p.score:f}:{p.index}:{p.label}" if count else getattr(p, name) for row in top for p in row]
        outputs.append(OipResponseOutput(name=name, datatype="BYTES" if count else OUTPUTS[name],
                                         shape=[len(top), len(top[0])], data=data))
    return outputs
