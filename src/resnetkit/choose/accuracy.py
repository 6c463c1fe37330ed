"""Which accuracy a bench record shows: the weights' published figures where they describe what ran, or
top-1/top-5 measured with ``--eval DIR``."""

from __future__ import annotations

import multiprocessing
from typing import Any

from ..core.spec import ModelMeta, PublishedMetrics
from ..core.zoo import get_spec, is_zoo_name
from ..run.loading import Classifier
from .records import BenchConfig, BenchRecord

DEFAULT_PRECISION_BOUND = 0.2  # points of top-1; the bound the default precision is held to (docs/optimize.md)


def published_metrics(meta: ModelMeta) -> tuple[PublishedMetrics, str]:
    """The published figures that describe this model, and how they apply.

    A zoo model timed with random weights (costs do not depend on weight values) is reported with its
    default checkpoint's published figures, said so; artifacts and loaded weights carry their own."""
    if meta.weights == "random" and is_zoo_name(meta.arch) and meta.provenance is None:
        weights = get_spec(meta.arch).default_weights
        return weights.metrics, f" (for {weights.tag}; timed with random weights of the same architecture)"
    return meta.metrics, ""


def published_accuracy(meta: ModelMeta, precision: str, *, default_precision: bool) -> dict[str, Any]:
    """The weights' published top-1/top-5 where they describe this variant: unmodified weights run in
    fp32, or in the default precision (bf16 where the CPU computes it natively, fp16 on a GPU), which resnetkit
    holds to 0.2 points of fp32 (measured on the CIFAR-10 ResNets: docs/optimize.md, docs/gpu.md); said so."""
    metrics, applies = published_metrics(meta)
    if metrics.top1 is None:
        source = "none published for these weights (measure with --eval DIR)"
    elif precision == "fp32":
        return {"top1": metrics.top1, "top5": metrics.top5, "accuracy_source": f"published: {metrics.source}{applies}",
                "accuracy_dataset": metrics.dataset}
    elif precision in ("bf16", "fp16") and default_precision:
        return {"top1": metrics.top1, "top5": metrics.top5, "accuracy_dataset": metrics.dataset,
                "accuracy_source": f"published for fp32: {metrics.source}{applies}; ran {precision}, the default "
                                   f"precision (within {DEFAULT_PRECISION_BOUND} points of fp32 on the CIFAR-10 "
                                   "ResNets; check with --eval DIR)"}
    else:
        source = (f"not measured: the published {metrics.top1:.2f} % is for fp32 and this variant ran {precision} "
                  "(measure with --eval DIR)")
    return {"top1": None, "top5": None, "accuracy_source": source, "accuracy_dataset": metrics.dataset}


def add_measured_accuracy(record: BenchRecord, classifier: Classifier, config: BenchConfig) -> None:
    """Top-1/top-5 of ``classifier`` on ``config.eval_dir`` into ``record``."""
    from ..run.evaluate import evaluate

    # bench measures in daemon processes, which may not start the DataLoader's decoding processes: decode in-process
    workers = 0 if multiprocessing.current_process().daemon else None
    report = evaluate(classifier, config.eval_dir, limit=config.eval_limit, progress=False, workers=workers)
    record.top1, record.top5, record.eval_images = report.top1, report.top5, report.n_images
    record.accuracy_source = f"measured on {config.eval_dir} ({report.n_images} images)"
    record.accuracy_dataset = str(config.eval_dir)
