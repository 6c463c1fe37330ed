"""Command-line interface: a thin layer that parses input and calls the library."""

from __future__ import annotations

from .app import app

# Each module adds its commands to ``app``; a new command is a new module listed here.
from . import bench_cmd, models_cmd, run_cmd, train_cmd, weights_cmd, optimize_cmd, serve_cmd, tune_cmd  # noqa: E402,F401


def main() -> None:
    """Entry point of the ``resnetkit`` console script (errors are printed by ``app``'s group, see app.py)."""
    app()
