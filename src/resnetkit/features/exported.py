"""Features from exported graphs: the pooled features, which the graph computes just before its head.

The backend that runs the file knows how to make them the output (its registry record's ``features``
tap: ONNX Runtime and OpenVINO cut the graph at the input of the final linear layer); files whose
backend has no tap (TorchScript) keep only the logits.
"""

from __future__ import annotations

from ..backends.base import Runner, registered
from ..run.loading import Classifier


def exported_features_runner(classifier: Classifier) -> Runner | None:
    """A runner returning the pooled features of a classifier loaded from an exported graph, or None."""
    backend = next((b for b in registered() if b.name == classifier.ran.backend), None)
    if backend is None or backend.features is None:
        return None
    return backend.features(classifier.runner)
