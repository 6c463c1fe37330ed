"""The seeds' table (the blog posts resnetkit started from): ResNet-18/34/50/101/152 at batch 16, 224x224,
fp32, on a GPU: ms per batch, GPU memory, images per second. Their own figures (an NVIDIA T4) are not
shipped: whoever has them passes them as a JSON file (:func:`read_published`) to print next to ours."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ResnetkitError

SEEDS_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
SEEDS_BATCH_SIZE = 16
SEEDS_PRECISION = "fp32"
PUBLISHED_FORMAT = ('{"source": "...", "device": "NVIDIA T4", "rows": {"resnet18": {"ms_per_batch": ..., '
                    '"gpu_mb": ..., "img_s": ...}, ...}}')
ROW_FIELDS = ("ms_per_batch", "gpu_mb", "img_s")


class PublishedFileError(ResnetkitError):
    """A ``--published`` file that is missing or not in :data:`PUBLISHED_FORMAT`."""


@dataclass(frozen=True)
class PublishedRow:
    """One model's published figures (None: not given)."""

    ms_per_batch: float | None = None
    gpu_mb: float | None = None
    img_s: float | None = None


@dataclass(frozen=True)
class PublishedTable:
    """Someone else's figures for the seeds' table: where they come from, on which GPU, per model."""

    source: str
    device: str
    rows: dict[str, PublishedRow]


def read_published(path: str | Path) -> PublishedTable:
    """The published table in ``path`` (:data:`PUBLISHED_FORMAT`), or a :class:`PublishedFileError` saying what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PublishedFileError(f"--published {path}: no such file.") from None
    except (OSError, ValueError) as exc:
        raise PublishedFileError(f"--published {path} is not a JSON file ({exc}); write {PUBLISHED_FORMAT}.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), str) and data[key].strip()
                                             for key in ("source", "device")):
        raise PublishedFileError(f"--published {path} needs a 'source' and a 'device' (text) and 'rows': "
                                 f"{PUBLISHED_FORMAT}.")
    rows = data.get("rows")
    if not isinstance(rows, dict) or not rows:
        raise PublishedFileError(f"--published {path} needs 'rows', one per model: {PUBLISHED_FORMAT}.")
    return PublishedTable(data["source"], data["device"], {model: _row(path, model, row) for model, row in rows.items()})


def _row(path: str | Path, model: str, row: Any) -> PublishedRow:
    if model not in SEEDS_MODELS:
        raise PublishedFileError(f"--published {path}: '{model}' is not in the seeds' table ({', '.join(SEEDS_MODELS)}).")
    unknown = set(row) - set(ROW_FIELDS) if isinstance(row, dict) else {"(not an object)"}
    if unknown:
        raise PublishedFileError(f"--published {path}: the row of {model} has {', '.join(sorted(unknown))}; "
                                 f"a row holds {', '.join(ROW_FIELDS)} (numbers, or null where not published).")
    values = {name: row.get(name) for name in ROW_FIELDS}
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise PublishedFileError(f"--published {path}: {model}'s {name} is {value!r}, not a positive number "
                                     "(null where not published).")
    return PublishedRow(**values)
