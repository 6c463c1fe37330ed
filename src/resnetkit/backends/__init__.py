"""Extra inference backends and artifact formats; importing this package registers them.

Each module registers its backend with :func:`resnetkit.runners.register_backend` and,
where it reads files, an artifact loader with :func:`resnetkit.models.register_artifact_loader`.
``auto`` is imported last because it measures the others.
"""

from __future__ import annotations

from . import onnxruntime, openvino, torch_compile, torchscript  # noqa: F401
from . import auto  # noqa: F401,E402
