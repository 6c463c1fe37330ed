"""Packaging: the extras table against pyproject.toml, and the built wheel in a fresh venv without extras.

The fresh venv gets resnetkit from the wheel (``pip install --no-deps``) and its core dependencies linked from
the installed ones (the same files, not a second 5 GB copy of torch); ``pip check`` then proves that they are
exactly what the wheel's metadata asks for, and no extra's module is importable there.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from resnetkit.core import extras
from resnetkit.core.errors import ExtraRequiredError

from conftest import CIFAR_TEST, CIFAR_WEIGHTS, require, run_cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def closure(requirements: list[str], extras_wanted: tuple[str, ...] = ()) -> set[str]:
    """Normalised names of the installed distributions that ``requirements`` pull in, recursively."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras_wanted) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or ("",))):
            continue
        if not installed(req.name):
            continue
        name = md.distribution(req.name).metadata["Name"].lower().replace("_", "-")
        if name == "resnetkit":  # resnetkit[serve,predict]: its own extras
            todo += [(Requirement(r), tuple(req.extras)) for e in req.extras for r in declared(e)]
            continue
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), tuple(req.extras)) for r in md.requires(name) or []]
    return seen


def installed(name: str) -> bool:
    try:
        return md.distribution(name) is not None
    except md.PackageNotFoundError:
        return False


def declared(extra: str) -> list[str]:
    return PYPROJECT["optional-dependencies"][extra]


@functools.cache
def installed_modules() -> dict[str, list[str]]:
    return md.packages_distributions()


def providers(module: str) -> set[str]:
    """Normalised names of the distributions that install top-level ``module``."""
    return {d.lower().replace("_", "-") for d in installed_modules().get(module, [])}


def imported_modules() -> set[str]:
    """Top-level third-party modules that resnetkit's source imports anywhere (function bodies included)."""
    found = set()
    for path in (ROOT / "src" / "resnetkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"resnetkit"}


def test_every_extra_of_the_table_is_declared_and_provides_its_modules() -> None:
    optional = PYPROJECT["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        assert extra in optional, f"the table's extra {extra} is not declared in pyproject.toml"
        if not all(installed(Requirement(r).name) for r in declared(extra)):
            continue  # checked where it is installed: scripts/test.sh installs every extra
        dists = closure(declared(extra))
        for module in modules:
            assert providers(module) & dists, f"{module} (table: {extra}) is installed by none of {extra}'s packages"
    # all: every extra but edge, whose converter pins typing-extensions below 4.13; it has a venv of its own
    assert set(Requirement(optional["all"][0]).extras) == set(extras.EXTRAS) - {"edge"}
    assert "resnetkit[all]" in optional["dev"] and "resnetkit[edge]" in optional["dev-edge"]


def test_every_import_is_core_or_in_the_table() -> None:
    core = closure(PYPROJECT["dependencies"])
    assert {"torch", "torchvision"} <= core
    for module in imported_modules():
        assert providers(module) & core or extras.extra_of(module), f"{module} is neither a core dependency nor an extra's"
    for module in ("fastapi", "onnxruntime", "openvino", "pyarrow", "av", "faiss", "pytorch_grad_cam", "ray"):
        assert not providers(module) & core, f"{module} is pulled in by the core dependencies"


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name))
    with pytest.raises(ExtraRequiredError) as info:
        extras.require("serve", "'resnetkit serve'")
    assert str(info.value) == ("'resnetkit serve' needs the 'serve' extra (uvicorn not installed). "
                               "Install it with: pip install 'resnetkit[serve]'")
    assert extras.extra_of("onnxruntime.quantization") == "backends" and extras.extra_of("numpy") is None


def test_cli_turns_a_missing_extra_into_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None if name == "pyarrow" else real(name))
    result = run_cli("predict", "cifar_resnet20", "x.jpg", "-o", "out.parquet")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: 'resnetkit predict' needs the 'predict' extra (pyarrow not installed). "
                                     "Install it with: pip install 'resnetkit[predict]'")


# ---- the wheel in a fresh venv ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist and the wheel of this tree."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True, capture_output=True)
    return out


def link_distribution(name: str, site: Path) -> None:
    """Make installed distribution ``name`` importable in ``site`` by symlinking its top-level entries."""
    dist = md.distribution(name)
    origin = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        target = site / top
        if not target.exists():
            target.symlink_to(origin / top)


@pytest.fixture(scope="module")
def core_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv: the wheel without extras, and the core dependencies the wheel's metadata asks for."""
    venv = tmp_path_factory.mktemp("venv") / "core"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in closure(PYPROJECT["dependencies"]):
        link_distribution(name, site)
    wheel = next(dist.glob("resnetkit-*.whl"))
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--quiet", str(wheel)], check=True)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, f"the core venv does not satisfy the wheel's dependencies:\n{check.stdout}"
    return venv


def in_venv(venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``resnetkit ARGS`` run from the fresh venv, outside the source tree."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "resnetkit"), *args], capture_output=True, text=True, cwd=venv,
                          env={**clean, **(env or {})}, timeout=600)


def test_the_wheel_and_sdist_carry_the_package_data(dist: Path) -> None:
    names = zipfile.ZipFile(next(dist.glob("resnetkit-*.whl"))).namelist()
    for data in ("resnetkit/static/index.html", "resnetkit/static/app.js", "resnetkit/core/resources/imagenet_wnids.txt"):
        assert data in names
    assert not [n for n in names if n.startswith("tests/")]
    assert len(list(dist.glob("resnetkit-*.tar.gz"))) == 1


@pytest.mark.slow
def test_the_core_wheel_classifies_and_names_the_extras(core_venv: Path, tmp_path: Path) -> None:
    cat, ship = require(CIFAR_TEST / "cat" / "0000.jpg"), require(CIFAR_TEST / "ship" / "0001.jpg")
    weights = require(CIFAR_WEIGHTS / "resnet20-12fca82f.th")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "RESNETKIT_TUNING_CACHE": str(tmp_path / "tuning.json")}
    python = core_venv / "bin" / "python"
    where = subprocess.run([python, "-c", "import resnetkit, fastapi"], capture_output=True, text=True, cwd=core_venv)
    assert "No module named 'fastapi'" in where.stderr  # no extra came along
    assert in_venv(core_venv, "--version").stdout.strip() == f"resnetkit {md.version('resnetkit')}"
    assert "cifar_resnet20" in in_venv(core_venv, "models").stdout
    assert in_venv(core_venv, "weights", "import", "cifar_resnet20", str(weights), env=env).returncode == 0

    result = in_venv(core_venv, "classify", "cifar_resnet20", str(cat), str(ship), "-k", "1", env=env)
    assert result.returncode == 0, result.stderr
    labels = [line.split(": ")[1].split()[0] for line in result.stdout.splitlines()]
    assert labels == ["cat", "ship"]

    for command, extra in ((["serve", "cifar_resnet20"], "serve"), (["predict", "cifar_resnet20", str(cat), "-o", "o.csv"], "predict"),
                           (["export", "cifar_resnet20", "--format", "onnx", "-o", "m.onnx"], "backends")):
        result = in_venv(core_venv, *command, env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"pip install 'resnetkit[{extra}]'" in result.stderr


def test_setup_passes_pips_package_sources_on_to_uv(tmp_path: Path) -> None:
    """scripts/setup.sh installs with uv, which reads no pip configuration: scripts/pip_sources.py turns pip's into
    uv options, each from the scope pip gives precedence (global < install < PIP_* environment)."""
    config = tmp_path / "pip.conf"  # loaded after the machine's own files, so it decides every option it sets
    config.write_text("[global]\nindex-url = https://global.example/simple\n"
                      "extra-index-url = https://a.example/simple https://b.example/simple\n"
                      "find-links = /global/wheels\nconstraint = /global/constraints.txt\n"
                      "[install]\nfind-links = /install/wheels\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": str(config), "PIP_CONSTRAINT": "/env/constraints.txt"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pip_sources.py")], env=env, capture_output=True,
                          text=True, check=True)
    words = done.stdout.splitlines()
    options: dict[str, list[str]] = {}
    for option, value in zip(words[::2], words[1::2]):
        options.setdefault(option, []).append(value)
    assert options == {"--index-url": ["https://global.example/simple"],
                       "--extra-index-url": ["https://a.example/simple", "https://b.example/simple"],
                       "--find-links": ["/install/wheels"], "--constraint": ["/env/constraints.txt"]}


PACKAGE_IMPORT = """
import sys
import resnetkit
light = not {"torch", "openvino", "onnxruntime"} & set(sys.modules)
import resnetkit.explain.cam  # the subpackage named like the function: importing it keeps the function bound
from resnetkit import explain, load_model
print(light, callable(resnetkit.explain) and resnetkit.explain is explain, load_model.__module__)
print(sorted(name for name in resnetkit.__all__ if not hasattr(resnetkit, name)))
"""


def test_the_package_imports_its_api_on_first_use() -> None:
    """``import resnetkit`` imports neither torch nor a runtime (the console script starts bench's fork server
    before that); every public name resolves on first use, and ``resnetkit.explain`` stays the function."""
    done = subprocess.run([sys.executable, "-c", PACKAGE_IMPORT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True resnetkit.run.loading", "[]"]
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        __import__("resnetkit").no_such_name


@pytest.mark.parametrize("argv, starts", [(["bench", "--models", "resnet18"], True), (["bench", "--help"], False),
                                          (["models"], False), (["--version"], False), (["--help"], False), ([], False)])
def test_the_console_script_starts_the_fork_server_for_bench_only(argv, starts, monkeypatch) -> None:
    from resnetkit import cli, launch

    started, ran = [], []
    monkeypatch.setattr(launch, "start_fork_server", lambda: started.append(1))
    monkeypatch.setattr(cli, "main", lambda: ran.append(1))
    monkeypatch.setattr(sys, "argv", ["resnetkit", *argv])
    launch.main()
    assert (bool(started), ran) == (starts, [1])


FORK_SERVER_CHILD = """
import os, time
from pathlib import Path
from resnetkit.core.processes import start_fork_server
start_fork_server()
children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
deadline = time.monotonic() + 10  # a child's command line is its parent's until its exec completes
while time.monotonic() < deadline and not any(b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
                                              for pid in children.read_text().split()):
    time.sleep(0.05)
print(time.monotonic() < deadline)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_the_fork_server_starts_beside_this_process() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_SERVER_CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", (done.stdout, done.stderr)
