"""User-facing errors.

Every mistake a user can make (bad path, unknown model, offline download, wrong hash...)
raises a subclass of :class:`ResnetkitError` whose message says what is wrong and what to
do. The CLI prints the message without a traceback and exits non-zero; the HTTP service
maps it to a JSON error.
"""

from __future__ import annotations


class ResnetkitError(Exception):
    """An error caused by input or environment, with a message meant for the user."""

    exit_code = 2


class UnknownModelError(ResnetkitError, KeyError):
    """A model reference is neither a zoo name nor a readable resnetkit artifact."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class WeightsError(ResnetkitError):
    """Weights could not be downloaded, verified, found in the cache or loaded."""


class ImageError(ResnetkitError):
    """A file or byte string is not a decodable, acceptable image."""


class DatasetError(ResnetkitError):
    """A class-per-folder dataset is missing, empty or does not match the model."""


class OutputError(ResnetkitError):
    """An output file cannot be written where it was asked for (no permission, a folder there, no such device)."""


class ModelOutputError(ResnetkitError):
    """A model computed outputs that are not finite numbers (broken weights, or an overflow in low precision)."""


class BackendUnavailableError(ResnetkitError):
    """The requested inference backend is unknown or not installed on this machine."""


class ModuleRequiredError(ResnetkitError):
    """A command needs the PyTorch model, and the model was loaded from an exported file that keeps only logits."""


class ExtraRequiredError(ResnetkitError):
    """A command needs an optional extra (``pip install 'resnetkit[serve]'``) that is not installed here."""
