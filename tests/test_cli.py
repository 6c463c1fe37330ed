"""One CLI vocabulary: help on every command with its defaults, usage lines in the usual form,
one ``error:`` style for every mistake (no traceback), ``--json`` prints JSON and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.text import Text
from typer.core import TyperArgument, TyperOption

from resnetkit.cli import app

from conftest import run_cli


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():  # a group
        found += _commands(sub, path + (name,))
    return found


COMMANDS = _commands(typer.main.get_command(app))
LEAVES = [(path, command) for path, command in COMMANDS if not hasattr(command, "commands")]


def ids(item) -> str:
    return " ".join(item[0]) or "resnetkit"


def test_the_main_commands_exist():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"models", "weights pull", "weights import", "weights list", "classify", "evaluate", "bench", "recommend",
            "serve", "finetune", "train", "distill", "export", "quantize", "prune", "backends"} <= names


@pytest.mark.parametrize("item", COMMANDS, ids=ids)
def test_help_on_every_command(item):
    path, _ = item
    result = run_cli(*path, "--help")
    assert result.returncode == 0 and f"Usage: resnetkit {' '.join(path)}".rstrip() in result.stdout


def test_usage_lines_name_arguments_in_capitals():
    usage = run_cli("classify", "--help").stdout
    assert "resnetkit classify [OPTIONS] MODEL PATH..." in usage
    assert "resnetkit evaluate [OPTIONS] MODEL DATA_DIR" in run_cli("evaluate", "--help").stdout
    assert "resnetkit weights import [OPTIONS] MODEL FILE" in run_cli("weights", "import", "--help").stdout
    for path, command in LEAVES:
        ctx = typer.Context(command, info_name=" ".join(path))
        assert "{" not in command.get_usage(ctx), path


@pytest.mark.parametrize("item", LEAVES, ids=ids)
def test_every_option_shows_its_default_and_help_loses_no_text(item):
    path, command = item
    for param in command.params:
        help_text = param.help or ""
        # Help is rich markup: "[default: 16]" typed into a help text would vanish from the page.
        assert Text.from_markup(help_text).plain == help_text, f"{path} {param.name}: markup eats part of {help_text!r}"
        if isinstance(param, TyperArgument) or param.name == "help" or param.required:
            continue
        assert isinstance(param, TyperOption)
        off_flag = param.is_flag and param.default is False
        shown = param.default is not None and param.show_default is not False
        assert off_flag or shown or "default" in help_text.lower() or "required unless" in help_text, \
            f"{' '.join(path)} {param.opts[0]}: help does not say the default ({help_text!r})"


@pytest.mark.parametrize("args, message", [
    (["classify", "--bogus"], "No such option: --bogus"),
    (["classify"], "Missing argument 'MODEL'"),
    (["classify", "cifar_resnet20", "x.jpg", "--top-k", "0"], "Invalid value for '--top-k'"),
    (["clasify"], "No such command 'clasify'. Did you mean 'classify'?"),
    (["weights", "pull"], "Missing argument 'MODEL'"),
    (["finetune", "cifar_resnet20"], "finetune needs MODEL, DATA_DIR and -o RUN_DIR"),
    (["classify", "resnet5O", "x.jpg"], "Unknown model 'resnet5O'. Did you mean: resnet50"),
])
def test_every_mistake_is_one_error_line_exit_2_no_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    first, *rest = result.stderr.splitlines()
    assert first.startswith("error: ") and message in first
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr and "╭" not in result.stderr
    assert result.stdout == ""
    if rest:  # usage errors add how to call the command
        assert rest[0].startswith("Usage: resnetkit") and rest[1].startswith("See 'resnetkit")


def test_classify_without_images_is_an_error(cifar_weights, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    result = run_cli("classify", "cifar_resnet20", tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: No image files found in {tmp_path}")


def test_models_json_lists_weights_with_hashes():
    result = run_cli("models", "--json", "--include", "cifar_resnet2*")
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["cifar_resnet20"]
    assert rows[0]["weights"][0]["sha256"].startswith("12fca82f") and rows[0]["params_m"] == 0.27


@pytest.mark.parametrize("args", [["models"], ["backends"], ["weights", "list"]], ids=" ".join)
def test_json_is_all_that_is_printed(args):
    result = run_cli(*args, "--json")
    assert result.returncode == 0 and isinstance(json.loads(result.stdout), list)


@pytest.mark.slow
def test_classify_json_is_all_that_is_printed_even_with_a_bad_file(cifar_weights, cifar_test_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = sorted((cifar_test_dir / "cat").glob("*.jpg"))[:2]
    result = run_cli("classify", "cifar_resnet20", *good, bad, "--json", "-k", "1")
    data = json.loads(result.stdout)  # the whole of stdout: nothing else was printed there
    assert result.returncode == 1 and [r["error"] is None for r in data["results"]] == [True, True, False]
    assert all(r["predictions"][0]["label"] == "cat" for r in data["results"][:2])



def test_ctrl_c_ends_a_command_with_exit_130_and_no_traceback(monkeypatch):
    from resnetkit.cli import models_cmd

    def interrupted(pattern):
        raise KeyboardInterrupt

    monkeypatch.setattr(models_cmd, "list_models", interrupted)
    result = run_cli("models")
    assert (result.returncode, result.stderr, result.stdout) == (130, "interrupted\n", "")


def test_ci_fails_without_the_shared_data_instead_of_skipping(tmp_path):
    """The test suite's own rule (conftest.py): in CI the real weights and data must be there."""
    env = {**os.environ, "CI": "true", "RESNETKIT_SHARED": str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "tests/test_fileio.py"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and f"error: {tmp_path / 'missing'} is missing" in done.stdout + done.stderr
