"""``similar``: embed query images the way an embedding file was made, then find their nearest rows."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import RunInfo
from ..core.device import Device
from ..core.images import ImagePaths, iter_image_paths
from ..core.spec import RANDOM_WEIGHTS
from ..core.zoo import is_zoo_name
from .extract import collect, load_extractor
from .search import CosineIndex
from .store import EmbeddingFileError, load_embeddings


@dataclass(frozen=True)
class Neighbour:
    source: str
    score: float  # cosine similarity, 1.0 = same direction


@dataclass
class SimilarResult:
    """The nearest stored images of one query image, or why it could not be embedded."""

    source: str
    neighbours: list[Neighbour] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimilarReport:
    """The neighbours of every query image, the search method used and what embedded the queries."""

    results: list[SimilarResult]
    method: str  # exact | hnsw
    ran: RunInfo

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.ran.to_dict(), "results": [r.to_dict() for r in self.results]}


def find_similar(
    embeddings_file: str | os.PathLike[str],
    images: ImagePaths,
    *,
    k: int = 5,
    method: str = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    backend: str | None = None,
    precision: str | None = None,
    device: str | Device | None = None,
) -> SimilarReport:
    """The ``k`` most cosine-similar stored images for each query image, with the search method used.

    Queries are embedded with the model, weights and layer recorded in the file, on ``backend`` and ``device``
    (``--device`` words; None: auto). ``method`` is ``exact``, ``hnsw`` (faiss) or ``auto`` (exact up to
    ``search.EXACT_MAX_COMPARISONS`` queries x rows).
    """
    stored = load_embeddings(embeddings_file)
    info = stored.info
    if not info.get("model"):
        raise EmbeddingFileError(f"{embeddings_file} does not record a model reference; embed the images again "
                                 "with 'resnetkit embed MODEL ...'.")
    if info.get("weights") == RANDOM_WEIGHTS:
        raise EmbeddingFileError(f"{embeddings_file} was made with random weights, which cannot be recreated to embed "
                                 "the queries. Embed the images again with real weights.")
    if not is_zoo_name(info["model"]) and not Path(info["model"]).is_file():
        raise EmbeddingFileError(f"{embeddings_file} was embedded with {info['model']}, which no longer exists. "
                                 "Put the model file back there, or embed the images again.")
    valid = stored.valid
    if not len(valid):
        raise EmbeddingFileError(f"{embeddings_file} has no embeddings (every row is an error).")
    weights = info["weights"] if is_zoo_name(info["model"]) else None  # artifacts carry their weights
    sources = [str(p) for p in iter_image_paths(images)]
    if not sources:
        raise EmbeddingFileError("No query images found in the given paths.")
    extractor = load_extractor(info["model"], layer=info.get("layer"), weights=weights, backend=backend,
                               precision=precision, batch_size=batch_size, device=device)
    queries = collect(extractor, sources, batch_size, workers, progress=False)
    index = CosineIndex(stored.vectors[valid], Path(embeddings_file), method)
    results = [SimilarResult(source, error=error) for source, error in zip(queries.sources, queries.errors)]
    good, used = queries.valid, index.choose(len(queries.valid))
    if len(good):
        scores, rows, used = index.search(queries.vectors[good], k)
        for i, score_row, index_row in zip(good, scores, rows):
            results[i].neighbours = [Neighbour(stored.sources[valid[r]], round(float(s), 6))
                                     for s, r in zip(score_row, index_row) if r >= 0]
    return SimilarReport(results, used, extractor.ran)
