"""Explanations: class activation heatmaps (grad-cam library) over the images a classifier labels."""

from .cam import METHODS, Explainer, Heatmap
from .run import ExplainReport, ExplainResult, HeatmapFile, explain

__all__ = ["METHODS", "ExplainReport", "ExplainResult", "Explainer", "Heatmap", "HeatmapFile", "explain"]
