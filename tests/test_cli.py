"""Every command has --help; user mistakes exit non-zero with a message, never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from resnetkit.cli import app


def _command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(command, "commands"):  # a group (typer bundles its own click)
        for name, sub in command.commands.items():
            paths += _command_paths(sub, prefix + (name,))
    return paths


ALL_COMMANDS = _command_paths(typer.main.get_command(app))


def test_the_main_commands_exist():
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"models", "weights pull", "weights import", "weights list", "classify", "evaluate", "bench", "recommend"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "resnetkit")
def test_help_on_every_command(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_models_json_lists_weights_with_hashes():
    import json

    result = CliRunner().invoke(app, ["models", "--json", "--include", "cifar_resnet2*"])
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["cifar_resnet20"]
    assert rows[0]["weights"][0]["sha256"].startswith("12fca82f") and rows[0]["params_m"] == 0.27
