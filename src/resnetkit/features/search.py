"""Cosine nearest neighbours: exact with NumPy for small sets, a faiss HNSW index above a measured size.

``EXACT_MAX_COMPARISONS`` (queries x stored rows) comes from ``benchmarks/similar_search.py``
(see docs/features.md): below it one exact matrix product is faster than reading a prebuilt HNSW
index and searching it. The index is built once per embedding file and cached next to it
(``FILE.hnsw.faiss``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ResnetkitError
from ..core.fileio import atomic_write

EXACT_MAX_COMPARISONS = 10_000_000  # queries x stored rows: measured crossover 6.4M..15M (benchmarks/similar_search.py)
HNSW_NEIGHBOURS = 32  # graph degree M (faiss default for HNSW is 32)
HNSW_EF_SEARCH = 128  # candidates per query; recall@5 >= 0.95 in the benchmark
METHODS = ("auto", "exact", "hnsw")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (cosine similarity becomes an inner product)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine scores and row indices of unit-row ``base`` for each unit-row query."""
    scores = queries @ base.T
    k = min(k, base.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    indices = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, indices, axis=1), indices


def build_hnsw(vectors: np.ndarray):
    """A faiss HNSW inner-product index over ``vectors`` scaled to unit length."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(unit_rows(vectors)))
    return index


def hnsw_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def cached_hnsw(vectors: np.ndarray, embeddings_file: Path):
    """The HNSW index of ``embeddings_file`` from its cache file, built and saved (atomically) if stale."""
    import faiss

    cache = embeddings_file.with_name(embeddings_file.name + ".hnsw.faiss")
    if cache.is_file() and cache.stat().st_mtime >= embeddings_file.stat().st_mtime:
        index = faiss.deserialize_index(np.fromfile(cache, dtype=np.uint8))
        if index.ntotal == vectors.shape[0] and index.d == vectors.shape[1]:
            return index
    index = build_hnsw(vectors)
    with contextlib.suppress(OSError):  # a read-only folder: search without caching
        with atomic_write(cache) as handle:
            handle.write(faiss.serialize_index(index).tobytes())
    return index


@dataclass
class CosineIndex:
    """Stored vectors searched by cosine similarity, exactly or through a cached HNSW index."""

    vectors: np.ndarray
    cache_file: Path | None = None  # the embedding file; its HNSW index is cached next to it
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ResnetkitError(f"Unknown search method '{self.method}'. Choose one of: {', '.join(METHODS)}.")

    def choose(self, n_queries: int) -> str:
        """``exact`` or ``hnsw``: ``auto`` takes HNSW once the exact product would exceed the measured crossover."""
        if self.method != "auto":
            return self.method
        return "exact" if n_queries * len(self.vectors) <= EXACT_MAX_COMPARISONS else "hnsw"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(scores, row indices) best first for each query vector, and the method used."""
        queries = unit_rows(queries)
        method = self.choose(len(queries))
        if method == "exact":
            return (*exact_search(unit_rows(self.vectors), queries, k), method)
        index = cached_hnsw(self.vectors, self.cache_file) if self.cache_file else build_hnsw(self.vectors)
        return (*hnsw_search(index, queries, k), method)
