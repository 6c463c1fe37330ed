"""Help texts say what the code does: every option's default is visible, and what a help text says the default
is agrees with the code that runs when the option is left out.

Typer prints ``[default: X]`` from the parameter itself, so a default it shows cannot be wrong. An option whose
default is None (or that hides it) says it in words, ending its help with ``(default: X)``
(:func:`resnetkit.cli.app.default`; the service's options add ``; env VAR``). Those words are compared here
with the code: the backend ``auto`` for PyTorch models and each file suffix's own runtime (the backend
registry), auto's precision on the CPU and on a GPU, the decode workers, the device word, the service's
settings, bench's and training's defaults. Every command of the app is walked, whoever owns it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable

import pytest
import typer
from typer.core import TyperOption

from resnetkit.backends import auto
from resnetkit.backends.base import DEFAULT_BACKEND, quantize_methods, quantizers_of, readers_of
from resnetkit.choose.bench import BenchConfig
from resnetkit.cli import app
from resnetkit.cli.app import App, default
from resnetkit.core.device import CPU, DEVICE_WORDS, Device, usable_cores
from resnetkit.core.zoo import get_spec, list_models
from resnetkit.run.classify import default_workers
from resnetkit.serve.settings import ENV_PREFIX, ServeSettings
from resnetkit.train.config import FROM_RANDOM, FROM_WEIGHTS

GPU = Device("cuda", 0)  # a description only: nothing here touches a GPU
SAID = "(default: "


def leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every runnable command under ``command`` with its path of names (``weights pull``...)."""
    if not hasattr(command, "commands"):
        return [(path, command)]
    return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, path + (name,))]


def said_default(help_text: str) -> tuple[str | None, str | None]:
    """What a help text says the default is (its closing ``(default: X)``, a period after it allowed), and the
    environment variable it names (``(default: X; env VAR)``); (None, None) if it says nothing."""
    text = help_text.rstrip().rstrip(".")
    start = text.rfind(SAID)
    if start < 0 or not text.endswith(")"):
        return None, None
    said, _, env = text[start + len(SAID):-1].partition("; env ")
    return said, env or None


def same_value(said: str, value: Any) -> bool:
    """``said`` as a person writes ``value``: 8 for 8.0, on/off for True/False."""
    if isinstance(value, bool):
        return said.lower() in (("on", "yes", "true") if value else ("off", "no", "false"))
    if isinstance(value, (int, float)):
        try:
            return float(said) == float(value)
        except ValueError:
            return False
    return said == str(value)


def long_flag(option: TyperOption) -> str:
    return next((o for o in option.opts if o.startswith("--")), option.opts[0])


# What the code says, per option: a check takes the command's path, the option and the default its help says
# (None: it says none), and returns what disagrees ("" when all agrees).
Check = Callable[[tuple[str, ...], TyperOption, "str | None"], str]


def check_backend(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """None runs PyTorch models on backends.base.DEFAULT_BACKEND; each 'RUNTIME for .suffix' the help names is the
    registry's own runtime of that suffix. quantize's --backend picks the writer instead: its help names each
    method's default writer (backends.base.quantizers_of)."""
    if said is None:
        return ""
    if path == ("quantize",):
        return check_quantize_writer(said)
    wrong = [] if said.startswith(f"{DEFAULT_BACKEND} for PyTorch models") else [
        f"says {said!r}; PyTorch models run on {DEFAULT_BACKEND!r} (backends.base.DEFAULT_BACKEND)"]
    for runtime, suffix in re.findall(r"(\w[\w ]*?) for (\.\w+)", said):
        readers = readers_of(suffix)
        own = next(iter(readers), None)
        if own is None or runtime.lower().replace(" ", "") != own.replace("-", ""):
            wrong.append(f"says {suffix} files run on {runtime}; their own runtime is {own}")
    return "; ".join(wrong)


def check_quantize_writer(said: str) -> str:
    """Each 'METHOD BACKEND' pair quantize's help names is the registry's default writer of that method."""
    wrong = [f"says {method} is written by {backend}; the default is {quantizers_of(method)[0][0].name}"
             for method, backend in re.findall(r"([\w-]+) (\w+)(?:,|$)", said.split(":", 1)[-1])
             if method in quantize_methods() and quantizers_of(method)[0][0].name != backend]
    missing = [method for method in quantize_methods() if method not in said]
    return "; ".join(wrong + ([f"does not name the default of {', '.join(missing)}"] if missing else []))


def check_precision(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """auto's default precision on this CPU, and on a GPU, as backends.auto.default_precision computes them."""
    if said is None:
        return ""
    on_cpu, on_gpu = auto.default_precision(CPU), auto.default_precision(GPU)
    missing = [claim for claim in (on_cpu, f"{on_gpu} on a GPU") if claim not in said]
    return f"says {said!r}; auto runs {on_cpu} on this CPU and {on_gpu} on a GPU" if missing else ""


def check_device(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """Every --device defaults to the word auto (the service's through its settings, see check_setting) and names
    the words core.device understands."""
    words = [word for word in ("auto", "cpu", "cuda") if word not in (option.help or "")]
    if "auto" not in (option.default, said):
        return f"defaults to {option.default if said is None else said!r}, not 'auto'"
    return f"help does not name {', '.join(words)} ({DEVICE_WORDS})" if words else ""


def check_workers(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """None decodes with run.classify.default_workers: a fixed number next to CPU inference, every usable core
    for a GPU."""
    if option.default is not None or said is None or said_default(option.help or "")[1]:
        return ""  # a shown default, or the service's own setting
    claims = [str(default_workers(CPU))]
    if default_workers(GPU) == usable_cores():
        claims += ["every usable core", "GPU"]
    missing = [claim for claim in claims if claim not in said]
    return (f"says {said!r}; default_workers is {default_workers(CPU)} on the CPU and "
            f"{default_workers(GPU)} (every usable core) for a GPU") if missing else ""


def check_weights(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """None loads each zoo model's default weights (the first of its spec, marked default by 'models')."""
    if said is None:
        return ""
    if "default weights" not in said:
        return f"says {said!r}; no --weights loads the model's default weights"
    odd = [name for name in list_models() if get_spec(name).get_weights(None) is not get_spec(name).weights[0]]
    return f"the default weights of {', '.join(odd)} are not their first" if odd else ""


BENCH_FIELDS = {"--batch-size": "batch_size", "--tolerance": "tolerance", "--max-seconds": "max_seconds"}


def check_bench(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """bench's None options take BenchConfig's defaults, and BenchConfig.quick()'s with --quick."""
    field = BENCH_FIELDS.get(long_flag(option))
    if field is None or said is None:
        return ""
    expected = f"{getattr(BenchConfig(), field):g}, quick: {getattr(BenchConfig.quick(), field):g}"
    return f"says {said!r}; BenchConfig says {expected!r}" if said != expected else ""


def check_training(path: tuple[str, ...], option: TyperOption, said: str | None) -> str:
    """Training's None options take FROM_WEIGHTS's values, or FROM_RANDOM's when the run starts from random weights."""
    name = option.name or ""
    if name not in FROM_WEIGHTS or said is None:
        return ""
    if name == "mode":
        expected = str(FROM_WEIGHTS["mode"])
        return f"says {said!r}; fine-tuning trains {expected!r} by default" if said != expected else ""
    expected = f"{FROM_WEIGHTS[name]:g}; {FROM_RANDOM[name]:g} from random weights"
    return f"says {said!r}; train.config says {expected!r}" if not said.startswith(expected) else ""


def check_setting(env: str, said: str) -> str:
    """The service's options default to ServeSettings (read from ``env``)."""
    name = env.removeprefix(ENV_PREFIX).lower()
    defaults = ServeSettings.model_construct()
    if not hasattr(defaults, name):
        return f"names {env}, which is no setting of ServeSettings"
    value = getattr(defaults, name)
    return "" if value is None or same_value(said, value) else f"says {said!r}; ServeSettings.{name} is {value!r}"


TRAINING = ("finetune", "train", "distill")  # their own loop: --precision, --workers... mean training's
CHECKS: dict[str, Check] = {"--device": check_device}
INFERENCE_CHECKS: dict[str, Check] = {"--backend": check_backend, "--precision": check_precision,
                                      "--workers": check_workers, "--weights": check_weights}
COMMAND_CHECKS: dict[str, Check] = {"bench": check_bench, **{name: check_training for name in TRAINING}}


def help_problems(path: tuple[str, ...], command: Any) -> list[str]:
    """``--flag: what disagrees`` for each option of ``command`` whose help and code disagree about its default."""
    found = []
    for option in command.params:
        if not isinstance(option, TyperOption) or option.name == "help" or option.required:
            continue
        help_text = option.help or ""
        said, env = said_default(help_text)
        off_flag = option.is_flag and option.default is False
        shown = option.default is not None and option.show_default is not False and not off_flag
        wrong = []
        if said is None and not (shown or off_flag or "required unless" in help_text):
            wrong.append(f"default {option.default!r} is not shown, and the help does not end with "
                         f"'{SAID}...)' saying what it means")
        if said is not None and shown and not same_value(said, option.default):
            wrong.append(f"help says {said!r}, the option's default is {option.default!r}")
        if env:
            wrong.append(check_setting(env, said or ""))
        command_name = path[0] if path else ""
        by_flag = CHECKS if command_name in TRAINING else {**CHECKS, **INFERENCE_CHECKS}
        if command_name == "export":  # export's --precision is what the file stores, not what a model runs in
            by_flag = {flag: check for flag, check in by_flag.items() if flag != "--precision"}
        for check in (by_flag.get(long_flag(option)), COMMAND_CHECKS.get(command_name)):
            if check is not None:
                wrong.append(check(path, option, said))
        found += [f"{long_flag(option)}: {message}" for message in wrong if message]
    return found


COMMANDS = leaves(typer.main.get_command(app))

@pytest.mark.parametrize("item", COMMANDS, ids=lambda item: " ".join(item[0]))
def test_help_defaults_agree_with_the_code(item):
    path, command = item
    assert help_problems(path, command) == [], f"resnetkit {' '.join(path)}"


def test_the_check_finds_help_texts_that_disagree_with_the_code():
    """A throwaway command whose help texts are wrong on purpose: each is reported."""
    throwaway = App(add_completion=False)

    @throwaway.command("wrong")
    def wrong(
        backend: Annotated[str | None, typer.Option("--backend", help=default("Backend.", "eager for PyTorch models; "
                                                                             "OpenVINO for .onnx"))] = None,
        precision: Annotated[str | None, typer.Option("--precision", help=default("Precision.", "fp32"))] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "cpu",
        workers: Annotated[int | None, typer.Option("--workers", help=default("Decoders.", "4"))] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Images to use.")] = None,
        top_k: Annotated[int, typer.Option("--top-k", help=default("Labels.", "3"))] = 5,
        port: Annotated[int | None, typer.Option("--port", help="Port (default: 9000; env RESNETKIT_PORT)")] = None,
        threads: Annotated[int | None, typer.Option("--threads", help=default("Threads.", "all cores"))] = None,
    ) -> None:
        """A command with wrong help texts."""

    [(path, command)] = leaves(typer.main.get_command(throwaway))
    problems = "\n".join(help_problems(("wrong",), command))
    assert "--backend: says 'eager for PyTorch models; OpenVINO for .onnx'; PyTorch models run on 'auto'" in problems
    assert "says .onnx files run on OpenVINO; their own runtime is onnxruntime" in problems
    assert f"--precision: says 'fp32'; auto runs {auto.default_precision(CPU)} on this CPU" in problems
    assert "--device: defaults to 'cpu', not 'auto'" in problems
    assert "--workers: says '4'; default_workers is" in problems
    assert "--limit: default None is not shown, and the help does not end with '(default: ...)'" in problems
    assert "--top-k: help says '3', the option's default is 5" in problems
    assert "--port: says '9000'; ServeSettings.port is 8000" in problems
    assert len(problems.splitlines()) == 7  # --threads says what None means, and nothing contradicts it


def test_said_default_reads_the_closing_default_only():
    assert said_default("Backend (see 'x'). (default: auto for PyTorch models (fastest); files: own)") == (
        "auto for PyTorch models (fastest); files: own", None)
    assert said_default("Port. (default: 8000; env RESNETKIT_PORT)") == ("8000", "RESNETKIT_PORT")
    assert said_default("Images (default: all).") == ("all", None)
    assert said_default("ONNX opset (default 18).") == (None, None)
    assert said_default("Images per forward pass.") == (None, None)
