"""Explanations: class activation heatmaps (grad-cam library) over the images a classifier labels."""

from .cam import METHODS, Explainer, Heatmap
from .run import ExplainResult, HeatmapFile, explain

__all__ = ["METHODS", "ExplainResult", "Explainer", "Heatmap", "HeatmapFile", "explain"]
