"""Which optional extra of ``pip install 'resnetkit[EXTRA]'`` provides which module: the one table.

The core install (the zoo, weights, classify, evaluate, bench, train) needs none of these. A command that
needs one calls :func:`require` before importing it; the CLI also turns a stray ``ModuleNotFoundError`` of a
module listed here into the same one-line error (:func:`missing_extra`). ``tests/test_packaging.py`` checks
this table against the extras that ``pyproject.toml`` declares.
"""

from __future__ import annotations

import importlib.util

from .errors import ExtraRequiredError

# extra -> the top-level modules it provides (import names, not distribution names); a module listed under
# several extras is reported under the first
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "multipart", "prometheus_client", "pydantic", "pydantic_settings",
              "fastapi_offline"),
    "backends": ("onnx", "onnxscript", "onnxruntime", "openvino", "openvino_telemetry"),
    "optimize": ("nncf", "torch_pruning"),  # and backends' (pyproject.toml: optimize pulls backends in)
    "predict": ("pyarrow",),
    "video": ("av",),
    "features": ("faiss", "pyarrow"),
    "explain": ("pytorch_grad_cam",),
    "ray": ("ray", "psutil", "yaml"),
    "hf": ("safetensors", "transformers"),
    "edge": ("litert_torch", "ai_edge_litert", "executorch", "coremltools", "onnxconverter_common", "torchao",
             "flatbuffers"),
}


def pip_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'resnetkit[{extra}]'"


# extras whose packages hold others back: best installed in a virtual environment of their own
OWN_VENV = {"edge": "its converter holds typing-extensions below 4.13"}


def install_hint(extra: str) -> str:
    """A sentence for error messages: how to install ``extra``."""
    hint = f"Install it with: {pip_hint(extra)}"
    return f"{hint}, best in a virtual environment of its own ({OWN_VENV[extra]})" if extra in OWN_VENV else hint


def extra_of(module: str) -> str | None:
    """The extra that provides ``module`` (a dotted name counts by its top level), or None if none does."""
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def extra_error(extra: str, purpose: str, modules: list[str]) -> ExtraRequiredError:
    """The error saying that ``purpose`` needs ``extra``, whose ``modules`` are missing."""
    return ExtraRequiredError(f"{purpose} needs the '{extra}' extra ({', '.join(modules)} not installed). "
                              f"{install_hint(extra)}")


def require(extra: str, purpose: str) -> None:
    """Raise :class:`ExtraRequiredError` unless every module of ``extra`` is importable; ``purpose`` names what
    needs it (``resnetkit serve``)."""
    missing = missing_modules(extra)
    if missing:
        raise extra_error(extra, purpose, missing)


def missing_extra(exc: ModuleNotFoundError, purpose: str) -> ExtraRequiredError | None:
    """The error to show for ``exc`` when the missing module is one of an extra's, else None (a real bug)."""
    extra = extra_of(exc.name or "")
    return None if extra is None else extra_error(extra, purpose, [exc.name.split(".")[0]])
