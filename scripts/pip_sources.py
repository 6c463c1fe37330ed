"""Print pip's configured package sources as uv options, one word per line (scripts/setup.sh passes them on).

uv reads neither pip.conf nor PIP_* variables, and without them it would miss a mirror, a wheel folder or the
constraints that pip is set to use. For each of index-url, extra-index-url, find-links and constraint, the value
comes from the scope pip gives precedence: global < install < environment (PIP_*). Hand-written: neither pip nor
uv offers this translation.
"""

from __future__ import annotations

import re
import subprocess
import sys

OPTIONS = ("index-url", "extra-index-url", "find-links", "constraint")
SCOPES = ("global", "install", ":env:")  # pip's precedence, lowest first


def sources(listing: str) -> dict[str, list[str]]:
    """Option -> values, from the output of ``pip config list``."""
    chosen: dict[str, list[str]] = {}
    for scope in SCOPES:
        for line in listing.splitlines():
            match = re.fullmatch(rf"{re.escape(scope)}\.({'|'.join(OPTIONS)})='(.*)'", line)
            if match:
                chosen[match[1]] = match[2].split()
    return chosen


def main() -> None:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for option, values in sources(listing).items():
        for value in values:
            print(f"--{option}\n{value}")


if __name__ == "__main__":
    main()
