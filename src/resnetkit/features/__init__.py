"""Embeddings (pooled features of a classifier), embedding files and cosine nearest-neighbour search."""

from .extract import Embeddings, FeaturesUnavailableError, extract_features
from .similar import Neighbour, SimilarReport, SimilarResult, find_similar
from .store import EmbedReport, embed_to_file, load_embeddings, write_embeddings

__all__ = ["EmbedReport", "Embeddings", "FeaturesUnavailableError", "Neighbour", "SimilarReport", "SimilarResult",
           "embed_to_file", "extract_features", "find_similar", "load_embeddings", "write_embeddings"]
