"""``python -m resnetkit`` runs the CLI."""

from .cli import main

main()
