"""``POST /explanations/{model}`` (TorchServe's route): a heatmap of where the model looks, as PNG or JSON."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from ...core.errors import ImageError, ResnetkitError
from ...core.images import decode_image
from ...run.loading import Classifier
from ...explain import Explainer
from ..deps import Hub, require_token
from ..hub import ServeError
from ..schemas import ONE_IMAGE_BODY
from ..uploads import read_uploads

router = APIRouter(tags=["Explanations"], dependencies=[Depends(require_token)])


async def _explainer(request: Request, name: str, classifier: Classifier) -> Explainer:
    """One explainer per served model, made on first use (a float32 copy of its PyTorch module, off the loop)."""
    cache: dict[str, Explainer] | None = getattr(request.app.state, "explainers", None)
    if cache is None:
        cache = request.app.state.explainers = {}
    if name not in cache:
        try:
            cache[name] = await asyncio.to_thread(Explainer, classifier)
        except ResnetkitError as exc:  # an exported file: no module to take gradients from
            raise ServeError(501, str(exc)) from None
    return cache[name]


# HTTP header values are Latin-1: a label in any other script (or with a '%') is sent percent-encoded as UTF-8,
# which JavaScript's decodeURIComponent and Python's urllib.parse.unquote turn back; plain ASCII labels are unchanged.
_HEADER_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")


def header_safe(label: str) -> str:
    """``label`` as an X-Label header value (see _HEADER_SAFE)."""
    return quote(label, safe=_HEADER_SAFE)


@router.post("/explanations/{model}", summary="Grad-CAM heatmap over one image for its top classes",
             responses={200: {"content": {"image/png": {}, "application/json": {}}}}, openapi_extra=ONE_IMAGE_BODY)
@router.put("/explanations/{model}", include_in_schema=False)  # curl -T sends PUT, as TorchServe's docs show
async def explanations(model: str, request: Request, hub: Hub,
                       top_k: Annotated[int, Query(ge=1, le=20, description="Classes to explain.")] = 1,
                       format: Annotated[Literal["png", "json"], Query(
                           description="png: the top class's heatmap; json: every heatmap as base64 PNG.")] = "png",
                       ) -> Response:
    """One image as the raw body (POST, or PUT as ``curl -T`` sends) or any multipart file field, like
    ``/predictions/{model}``."""
    served = hub.get(model)
    settings = hub.settings
    [upload] = await read_uploads(request, max_bytes=settings.max_upload_bytes, max_files=1, field=None)
    explainer = await _explainer(request, served.name, served.classifier)
    try:
        image = decode_image(upload.data, max_pixels=settings.max_pixels, allow_multi_frame=False)
    except ImageError as exc:
        raise ServeError(422, str(exc)) from None
    heatmaps = await asyncio.to_thread(explainer.explain, image, top_k)
    pngs = [h.png(served.name) for h in heatmaps]
    if format == "png":
        top = heatmaps[0].prediction
        return Response(pngs[0], media_type="image/png",
                        headers={"X-Label": header_safe(top.label), "X-Score": f"{top.score:.6f}"})
    return JSONResponse({"model": served.name, "method": explainer.method, "heatmaps": [
        {"label": h.prediction.label, "index": h.prediction.index, "score": h.prediction.score,
         "png_base64": base64.b64encode(png).decode()} for h, png in zip(heatmaps, pngs)]})
