"""One CLI vocabulary: help on every command, usage lines in the usual form, one ``error:`` style for every
mistake (no traceback), ``--json`` prints JSON and nothing else, ``--device`` and ``--random-weights`` wherever a
model runs, and every output names what ran. (Help texts' defaults: test_help_defaults.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.text import Text

from resnetkit.cli import app

from conftest import make_image, run_cli


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


def test_help_paragraphs_wrap_to_the_terminal_not_at_the_docstrings_line_breaks():
    page = run_cli("tune", "--help", env={"COLUMNS": "200"}).stdout
    assert ("Zoo models are measured with random weights: speed does not depend on the weight values, so nothing is "
            "downloaded") in page
    for path, command in LEAVES:
        assert all("\n" not in paragraph for paragraph in (command.help or "").split("\n\n")), path


@pytest.mark.parametrize("item", LEAVES, ids=ids)
def test_help_loses_no_text_to_markup(item):
    path, command = item
    for param in command.params:
        help_text = param.help or ""
        # Help is rich markup: "[default: 16]" typed into a help text would vanish from the page.
        assert Text.from_markup(help_text).plain == help_text, f"{path} {param.name}: markup eats part of {help_text!r}"


@pytest.mark.parametrize("args, message", [
    (["classify", "--bogus"], "No such option: --bogus"),
    (["classify"], "Missing argument 'MODEL'"),
    (["classify", "cifar_resnet20", "x.jpg", "--top-k", "0"], "Invalid value for '--top-k'"),
    (["clasify"], "No such command 'clasify'. Did you mean 'classify'?"),
    (["weights", "pull"], "Missing argument 'MODEL'"),
    (["finetune", "cifar_resnet20"], "finetune needs MODEL, DATA_DIR and -o RUN_DIR"),
    (["classify", "resnet5O", "x.jpg"], "Unknown model 'resnet5O'. Did you mean: resnet50"),
    (["classify", "missing.pt", "x.jpg"], "No such model file: missing.pt"),
    (["classify", "cifar_resnet20", ""], "An empty path was given"),
    (["bench", "--models", ""], "--models is empty"),
    (["bench", "--models", "cifar_resnet20", "--json", "--recommend"], "--recommend prints after the table"),
    (["bench", "--models", "cifar_resnet20", "-o", "/proc/bench.json"], "Cannot write /proc/bench.json"),
    (["bench", "--models", "cifar_resnet20", "--eval", "/no/such/folder"], "No such folder: /no/such/folder"),
    (["evaluate", "cifar_resnet20", ".", "--plot", "/proc/confusion.png"], "Cannot write /proc/confusion.png"),
    (["recommend", "--from", "/"], "/ is a folder, not a 'resnetkit bench -o FILE' file"),
    (["tune", "cifar_resnet20", "--refresh", "--clear"], "pick one"),
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


def test_classify_without_images_is_an_error_before_the_model_loads(tmp_path, monkeypatch):
    from resnetkit.cli import run_cmd

    (tmp_path / "notes.txt").write_text("no images here")
    monkeypatch.setattr(run_cmd, "load_model", lambda *a, **k: pytest.fail("loaded (and tuned) the model first"))
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



# The commands that run a model, with arguments that would do so: each takes --device, and --random-weights
# where the model is a zoo name (similar embeds with the model its file names; tune always measures random weights).
RUNS_A_MODEL = {
    "classify": ["cifar_resnet20", "x.jpg"],
    "evaluate": ["cifar_resnet20", "photos"],
    "video-bench": ["cifar_resnet20", "clip.mp4"],
    "predict": ["cifar_resnet20", "photos", "-o", "labels.parquet"],
    "embed": ["cifar_resnet20", "photos", "-o", "e.parquet"],
    "similar": ["e.parquet", "x.jpg"],
    "explain": ["cifar_resnet20", "x.jpg", "-o", "heatmaps"],
    "tune": ["cifar_resnet20"],
}


def _option(command_name: str, name: str):
    command = dict((" ".join(path), command) for path, command in LEAVES)[command_name]
    return next((param for param in command.params if param.name == name), None)


@pytest.mark.parametrize("name", RUNS_A_MODEL)
def test_every_command_that_runs_a_model_takes_the_same_device_and_random_weights_options(name):
    from typing import get_args

    from resnetkit.cli.app import DeviceOpt, RandomWeightsFlag

    device, random_weights = _option(name, "device"), _option(name, "random_weights")
    assert device.opts == ["--device"] and device.default == "auto" and device.help == get_args(DeviceOpt)[1].help
    if name in ("similar", "tune"):
        assert random_weights is None
    else:
        assert random_weights.opts == ["--random-weights"] and random_weights.help == get_args(RandomWeightsFlag)[1].help
    tune = dict((" ".join(path), command) for path, command in LEAVES)["tune"]
    assert "Zoo models are measured with random weights" in tune.help


def _absent_device() -> str:
    """A device this machine lacks: cuda where torch sees no GPU, else the GPU after the last one."""
    from resnetkit.core.device import cuda_count

    return f"cuda:{cuda_count()}" if cuda_count() else "cuda"


@pytest.mark.parametrize("name", RUNS_A_MODEL)
def test_a_device_this_machine_lacks_is_one_error_line_before_anything_is_loaded_or_written(name, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    word = _absent_device()
    result = run_cli(name, *RUNS_A_MODEL[name], "--device", word)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: --device {word}: ") and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no output folder, file or heatmap started


def test_a_device_word_that_is_no_device_is_refused():
    result = run_cli("classify", "cifar_resnet20", "x.jpg", "--device", "tpu")
    assert result.returncode == 2
    assert result.stderr == "error: --device 'tpu' is not a device: use auto, cpu, cuda or cuda:N.\n"


@pytest.mark.slow  # auto measures its candidates
def test_tune_names_the_chosen_runner_and_the_device_it_measured_on():
    from resnetkit.core.device import cpu_name, usable_cores

    data = json.loads(run_cli("tune", "cifar_resnet20", "--device", "cpu", "--json").stdout)
    ran = data["ran"]
    assert (ran["backend"], ran["precision"]) == (data["choice"]["backend"], data["choice"]["precision"])
    assert ran["device"] == "cpu" and ran["label"].endswith("on CPU (auto)")
    plain = run_cli("tune", "cifar_resnet20", "--device", "cpu").stdout
    assert f"chosen: {ran['label']}; each candidate timed" in plain
    assert "read from the cache: " in plain and f"(machine: {cpu_name()}, {usable_cores()} cores" in plain


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


def test_resnetkits_own_warnings_are_one_note_line(capsys, monkeypatch):
    cli_app = sys.modules["resnetkit.cli.app"]  # the module (resnetkit.cli.app is also the Typer app's name)
    passed_on: list[str] = []
    monkeypatch.setattr(cli_app, "_python_show_warning", lambda message, *rest: passed_on.append(str(message)))
    inside = str(cli_app.PACKAGE_DIR / "backends" / "common.py")
    cli_app._show_warning(UserWarning("int8 without calibration data"), UserWarning, inside, 151)
    assert capsys.readouterr().err == "note: int8 without calibration data\n" and passed_on == []
    cli_app._show_warning(UserWarning("from elsewhere"), UserWarning, "/site-packages/other.py", 7)
    assert passed_on == ["from elsewhere"]  # other packages' warnings as Python shows them


def test_pillows_pixel_limit_warning_is_left_to_resnetkits_own_limit(tmp_path):
    from conftest import png_header_claiming  # 100 M pixels: above Pillow's warning level, under its error's

    (tmp_path / "big.png").write_bytes(png_header_claiming(10_000, 10_000))
    opened = ("import resnetkit.cli.app, sys; from PIL import Image; Image.open(sys.argv[1]); "
              "print('opened')")
    done = subprocess.run([sys.executable, "-c", opened, str(tmp_path / "big.png")], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "opened\n", "")  # no two-line DecompressionBombWarning


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.3, 1.5])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line_exit_130(tmp_path, after_s):
    """While the CLI imports torch and the runtimes, not only once a command runs."""
    image = make_image(tmp_path / "a.png")
    process = subprocess.Popen([sys.executable, "-m", "resnetkit", "classify", "cifar_resnet20", "--random-weights",
                                str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, "interrupted\n")
