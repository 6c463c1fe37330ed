"""Server settings: one dataclass, filled from ``RESNETKIT_*`` environment variables and overrides."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core.errors import ResnetkitError
from ..core.images import DEFAULT_MAX_PIXELS
from ..core.zoo import get_spec, is_zoo_name

ENV_PREFIX = "RESNETKIT_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        if not is_zoo_name(self.ref) and not Path(self.ref).exists():
            get_spec(self.ref)  # raises UnknownModelError with suggestions


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``resnetkit serve`` can be told. Each field can also come from ``RESNETKIT_<FIELD>``."""

    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    threads: int | None = None
    max_upload_mb: float = 10.0
    max_files: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 256
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    backend: str | None = None  # None: each model's own runtime (eager for PyTorch models)
    precision: str | None = None
    token: str | None = None
    access_log: bool = True

    def __post_init__(self) -> None:
        positive = {"max_batch_size": self.max_batch_size, "max_upload_mb": self.max_upload_mb,
                    "max_files": self.max_files, "max_pixels": self.max_pixels, "max_queue": self.max_queue,
                    "workers": self.workers, "threads": self.threads or 1}
        for name, value in positive.items():
            if value <= 0:
                raise ResnetkitError(f"{_flag(name)} must be positive (got {value}).")
        if self.max_wait_ms < 0:
            raise ResnetkitError(f"--max-wait-ms must be zero or more (got {self.max_wait_ms}).")
        if self.max_queue < self.max_files:
            raise ResnetkitError(f"--max-queue ({self.max_queue}) must be at least --max-files ({self.max_files}), "
                                 "or requests with many files could never be admitted.")
        if not 0 <= self.port <= 65535:
            raise ResnetkitError(f"--port must be between 0 and 65535 (got {self.port}).")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def entries(self) -> list[ModelEntry]:
        return [ModelEntry.parse(m) for m in self.models]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServeSettings":
        """Defaults, then ``RESNETKIT_<FIELD>`` variables, then ``overrides`` that are not ``None``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = environ.get(ENV_PREFIX + f.name.upper())
            if text is not None and text.strip():
                values[f.name] = _coerce(f.name, str(f.type), text.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("models"), str):
            values["models"] = split_models(values["models"])
        return cls(**values)


def split_models(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _coerce(name: str, type_name: str, text: str) -> Any:
    """Convert an environment variable to the field's type, with a clear error."""
    kinds = {"int": int, "float": float, "bool": _parse_bool}
    kind = next((convert for word, convert in kinds.items() if type_name.startswith(word)), None)
    if kind is None:
        return text
    try:
        return kind(text)
    except ValueError:
        raise ResnetkitError(f"{ENV_PREFIX}{name.upper()}='{text}' is not a valid {type_name.split()[0]}.") from None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(text)
    return lowered in ("1", "true", "yes", "on")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
