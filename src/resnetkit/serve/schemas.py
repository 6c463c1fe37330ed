"""Pydantic schemas of every JSON response (they are also the OpenAPI schema at /docs), and the OpenAPI
request bodies of the routes that read their body themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator


# The nested models of json_body's schemas; app.py adds them to the OpenAPI document's components.schemas.
REQUEST_BODY_SCHEMAS: dict[str, Any] = {}

_BINARY = {"type": "string", "format": "binary"}
ONE_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (curl -T photo.jpg) or as any multipart file field "
                       "(-F data=@photo.jpg).",
        "content": {
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
            "multipart/form-data": {"schema": {"type": "object", "required": ["data"],
                                               "properties": {"data": _BINARY}}},
        },
    }
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that reads its body itself."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    REQUEST_BODY_SCHEMAS.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class PredictionOut(BaseModel):
    label: str = Field(examples=["cat"])
    index: int = Field(description="Class index in the model's output.", examples=[3])
    score: float = Field(description="Softmax probability, 0..1.", examples=[0.93])


class FileResult(BaseModel):
    filename: str | None = Field(description="The uploaded file's name; null for a raw request body.")
    predictions: list[PredictionOut] = Field(description="Top-k, most probable first; empty when error is set.")
    error: str | None = Field(default=None, description="Why this image could not be classified.")


class ClassifyResponse(BaseModel):
    model: str
    results: list[FileResult] = Field(description="One entry per uploaded image, in upload order.")
    latency_ms: float = Field(description="Server-side time from request to response, in milliseconds.")


class ModelInfo(BaseModel):
    name: str = Field(description="The name to use in URLs.")
    arch: str
    weights: str = Field(description="Zoo weights tag, file, or 'random'.")
    backend: str = Field(description="The backend that runs the model, e.g. 'openvino'.")
    precision: str
    device: str = Field(description="Where it runs: 'cpu' or 'cuda:N'.")
    device_name: str = Field(description="'CPU', or the GPU's name.")
    chosen_by_auto: bool = Field(description="Whether the auto backend chose the backend by measuring.")
    runtime: str = Field(description="All of the above for people, e.g. 'openvino/bf16 on CPU (auto)'.")
    num_classes: int
    input_size: int = Field(description="Side of the square input crop, in pixels.")
    preprocessing: str
    published_top1: float | None = Field(description="Top-1 accuracy published by the weights' authors, if any: "
                                                     "for fp32, on `dataset` (not measured here).")
    published_source: str = Field(description="Who published it, e.g. a torchvision weights enum or a README.")
    dataset: str
    max_batch_size: int


class ModelDetail(ModelInfo):
    categories: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    models: list[str] = Field(description="Models loaded and warmed up.")
    detail: str | None = Field(default=None, description="What is still loading, or why loading failed.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong and what to do, in one paragraph.")


class TorchServePing(BaseModel):
    status: str = Field(examples=["Healthy"])


class TorchServeError(BaseModel):
    code: int
    type: str
    message: str


class TorchServeModelRef(BaseModel):
    modelName: str
    modelUrl: str = Field(description="The model reference given when the server started (zoo name or file).")


class TorchServeModelList(BaseModel):
    models: list[TorchServeModelRef]


class TorchServeWorker(BaseModel):
    id: str
    startTime: str
    status: str = Field(examples=["READY"])
    memoryUsage: int = Field(description="Peak resident memory of the server process, in bytes.")
    pid: int
    gpu: bool = Field(default=False, description="Whether the model runs on a GPU.")
    gpuUsage: str = Field(default="N/A", description="On a GPU: its id and the memory PyTorch reserves there, "
                                                     "e.g. 'gpuId::0 memory.used [MiB]::120 MiB'.")


class TorchServeModelDescription(TorchServeModelRef):
    modelVersion: str
    runtime: str = Field(description="What runs the model and where, e.g. 'openvino/bf16 on CPU (auto)'.")
    minWorkers: int
    maxWorkers: int
    batchSize: int
    maxBatchDelay: float = Field(description="--max-wait-ms")
    loadedAtStartup: bool = True
    workers: list[TorchServeWorker]


# --- Open Inference Protocol (KServe v2) and KServe v1 ----------------------------------------------

class OipError(BaseModel):
    error: str = Field(description="What went wrong and what to do.")


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipLive(BaseModel):
    live: bool


class OipReady(BaseModel):
    ready: bool


class OipModelReady(BaseModel):
    name: str
    ready: bool


class OipTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size.")


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipRequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(default=None, description="Base64 strings, one per image (row-major if nested); "
                                                             "absent with the binary data extension.")


class OipRequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class OipInferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description='e.g. {"top_k": 3} (default 5)')
    inputs: list[OipRequestInput]
    outputs: list[OipRequestOutput] | None = None


class OipResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class OipInferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[OipResponseOutput]


class KServeV1Image(BaseModel):
    b64: str = Field(description="The image file, base64-encoded.")


class KServeV1Instance(BaseModel):
    """One image file, base64-encoded, in any of the forms KServe v1 clients send: ``{"b64": ...}``, a bare
    string, ``{"data": ...}`` (TorchServe's KServe handlers) or ``{"image": {"b64": ...}}`` (TensorFlow Serving's
    and KServe's image examples); exactly one of them."""

    b64: str | None = Field(default=None, description="The image file, base64-encoded.")
    data: str | None = Field(default=None, description="The same, as TorchServe's KServe handlers send it.")
    image: KServeV1Image | None = Field(default=None, description="The same, as TensorFlow Serving's examples do.")

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, value: Any) -> Any:
        return {"b64": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> "KServeV1Instance":
        if sum(form is not None for form in (self.b64, self.data, self.image)) != 1:
            raise ValueError('give each image as one of: a base64 string, {"b64": ...}, {"data": ...} or '
                             '{"image": {"b64": ...}}')
        return self

    @property
    def encoded(self) -> str:
        """The base64 text, whichever form carried it."""
        return self.b64 or self.data or (self.image.b64 if self.image else "")


class KServeV1Request(BaseModel):
    instances: list[KServeV1Instance] = Field(min_length=1)


class KServeV1Response(BaseModel):
    predictions: list[list[PredictionOut]] = Field(description="Top-k of each instance, most probable first.")
