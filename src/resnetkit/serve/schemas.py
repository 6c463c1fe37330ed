"""Pydantic schemas of every JSON response (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    backend: str
    precision: str
    num_classes: int
    input_size: int = Field(description="Side of the square input crop, in pixels.")
    preprocessing: str
    published_top1: float | None = Field(description="Top-1 accuracy published by the weights' authors, if any.")
    dataset: str
    max_batch_size: int


class ModelDetail(ModelInfo):
    categories: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Limits(BaseModel):
    max_upload_mb: float
    max_files: int
    max_pixels: int
    auth_required: bool


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
