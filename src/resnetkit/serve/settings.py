"""Server settings: one pydantic-settings class, filled from ``RESNETKIT_*`` environment variables and overrides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Mapping

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from ..core.device import DEVICE_WORDS
from ..core.errors import ResnetkitError
from ..core.images import DEFAULT_MAX_PIXELS
from ..core.spec import ModelMeta
from ..run.loading import check_model_ref

ENV_PREFIX = "RESNETKIT_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEVICE_WORD = re.compile(r"auto|cpu|cuda(:\d+)?")  # the form only: whether this machine has it is resolve_device's
_KINDS = {"int_parsing": "int", "int_from_float": "int", "float_parsing": "float", "bool_parsing": "bool"}


@dataclass(frozen=True)
class ModelEntry:
    """One model to serve: a reference (zoo name or resnetkit file) and the name it is served under."""

    ref: str
    name: str | None = None  # None: the zoo name, or the name stored in the file

    @classmethod
    def parse(cls, text: str) -> "ModelEntry":
        """``REF`` or ``NAME=REF``."""
        name, sep, ref = text.partition("=")
        entry = cls(ref.strip(), name.strip()) if sep else cls(text.strip())
        if entry.name is not None and not _NAME.match(entry.name):
            raise ResnetkitError(f"Model name '{entry.name}' may only use letters, digits, '_', '.' and '-'.")
        return entry

    def check(self) -> None:
        """Fail fast on a reference that is neither a zoo name nor an existing file."""
        check_model_ref(self.ref)

    def served_name(self, meta: ModelMeta) -> str:
        """The name in URLs: the one given, else the model's own (zoo name, or the name stored in the file)."""
        return self.name or meta.name


class ServeSettings(BaseSettings):
    """Everything ``resnetkit serve`` can be told. Each field can also come from ``RESNETKIT_<FIELD>``.

    Keyword arguments win over the environment; a bad value raises :class:`ResnetkitError` with a clear message.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="forbid")

    models: Annotated[tuple[str, ...], NoDecode] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    threads: int | None = None  # intra-op threads of each runner; None: chosen by measuring (cpu_split), unused on a GPU
    instances: int | None = None  # copies of each model running batches at once; None: measured with threads; GPU: 1
    max_upload_mb: float = 10.0
    max_files: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 256
    workers: int | None = None  # decode threads; None: the cores inference leaves (cpu_split), every core on a GPU
    backend: str | None = None  # None: auto for PyTorch models, a file's own runtime for exported files
    precision: str | None = None  # None: the backend's default (auto's: bf16 or fp32 on the CPU, fp16 on a GPU)
    device: str = "auto"  # auto, cpu, cuda or cuda:N; every served model runs there
    random_weights: bool = False  # zoo models with random weights (offline; the labels are meaningless)
    token: str | None = Field(default=None, repr=False)
    access_log: bool = True

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ResnetkitError(_explain(exc)) from None

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_models(value) if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device_word(cls, value: str) -> str:
        word = value.strip().lower()
        if not _DEVICE_WORD.fullmatch(word):
            raise ValueError(f"--device '{value}' is not a device: use {DEVICE_WORDS}.")
        return word

    @model_validator(mode="after")
    def _check(self) -> "ServeSettings":
        positive = {"max_batch_size": self.max_batch_size, "max_upload_mb": self.max_upload_mb,
                    "max_files": self.max_files, "max_pixels": self.max_pixels, "max_queue": self.max_queue,
                    "workers": self.workers, "threads": self.threads, "instances": self.instances}
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ValueError(f"{_flag(name)} must be positive (got {value}).")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be zero or more (got {self.max_wait_ms}).")
        if self.max_queue < self.max_files:
            raise ValueError(f"--max-queue ({self.max_queue}) must be at least --max-files ({self.max_files}), "
                             "or requests with many files could never be admitted.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535 (got {self.port}).")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def entries(self) -> list[ModelEntry]:
        return [ModelEntry.parse(m) for m in self.models]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServeSettings":
        """Defaults, then ``RESNETKIT_<FIELD>`` variables (of ``environ``, default ``os.environ``), then
        ``overrides`` that are not ``None``."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if environ is None:
            return cls(**given)
        env = EnvSettingsSource(cls)
        env.env_vars = parse_env_vars(environ, env.case_sensitive, env.env_ignore_empty, env.env_parse_none_str)
        return cls(_build_sources=((InitSettingsSource(cls, given), env), given))


def split_models(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _explain(exc: ValidationError) -> str:
    """The first validation error as one sentence naming the variable or option that was wrong."""
    error = exc.errors()[0]
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    field = str(error["loc"][0]) if error["loc"] else ""
    given = error.get("input")
    where = f"{ENV_PREFIX}{field.upper()}" if isinstance(given, str) else _flag(field)
    kind = _KINDS.get(error["type"])
    if kind:
        return f"{where}='{given}' is not a valid {kind}."
    return f"{where}: {error['msg']} (got {given!r})."


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
