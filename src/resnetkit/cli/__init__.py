"""Command-line interface: a thin layer that parses input and calls the library."""

from __future__ import annotations

import sys

from ..core.errors import ResnetkitError
from .app import app, err_console, styled

# Each module adds its commands to ``app``; a new command is a new module listed here.
from . import bench_cmd, models_cmd, run_cmd, train_cmd, weights_cmd, optimize_cmd, serve_cmd, video_cmd  # noqa: E402,F401


def main() -> None:
    """Entry point of the ``resnetkit`` console script."""
    try:
        app()
    except ResnetkitError as exc:
        err_console.print(styled(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
