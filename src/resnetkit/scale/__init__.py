"""Scale out on Ray: ``predict --ray`` on Ray Data, ``serve --ray`` on Ray Serve (``pip install 'resnetkit[ray]'``).

Importing this package does not import Ray; its modules ``data`` and ``serve`` do.
"""

from __future__ import annotations

from typing import Any

from .runtime import INSTALL_HINT, ray_runtime, require_ray

__all__ = ["INSTALL_HINT", "ray_runtime", "require_ray", "run_ray_serve"]


def run_ray_serve(settings: Any, **options: Any) -> None:
    """:func:`resnetkit.scale.serve.run_ray_serve`, with a clear error when Ray is not installed."""
    require_ray()
    from .serve import run_ray_serve as run

    run(settings, **options)
