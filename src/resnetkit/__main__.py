"""``python -m resnetkit`` runs the CLI (:mod:`resnetkit.launch`)."""

from .launch import main

main()
