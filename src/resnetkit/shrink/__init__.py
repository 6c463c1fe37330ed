"""Shrink and speed up a model: export, quantize and prune, each with before/after evidence."""

from __future__ import annotations

from .export import ExportReport, export_model
from .prune import PruneReport, prune
from .quantize import QuantizeReport, quantize

__all__ = ["ExportReport", "PruneReport", "QuantizeReport", "export_model", "prune", "quantize"]
