"""The packages of src/resnetkit import downward only, with no circles, counting imports inside functions too
(docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetkit"
# lowest first: a package may import the packages before it, never one after it
LAYERS = ("core", "interop", "backends", "run", "features", "explain", "train", "shrink", "choose", "batch", "serve",
          "scale", "cli")


def imports_of(path: Path) -> set[str]:
    """The resnetkit modules ``path`` imports, anywhere in the file, as dotted names."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            found.update(name for name in names if name.startswith("resnetkit"))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("resnetkit"))
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = package_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if source is None:
            continue
        for target in filter(None, map(package_of, imports_of(path))):
            if target != source:
                edges.setdefault(source, set()).add(target)
    return edges


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_lower_layers(package):
    upward = {t for t in package_edges().get(package, set()) if LAYERS.index(t) > LAYERS.index(package)}
    assert not upward, f"{package} imports {sorted(upward)}, which sit above it"


def test_core_imports_no_other_package():
    assert package_edges().get("core", set()) == set()


def test_no_module_imports_itself_back():
    """No circle between modules either (e.g. two backends that import each other)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {t for t in imports_of(path)}
    modules = set(graph)
    graph = {m: {t for t in targets if t in modules and t != m and not m.startswith(t + ".")}
             for m, targets in graph.items()}  # a module importing its own package's __init__ is not a circle
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(target):] + [module, target]))
            if target not in state:
                visit(target, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_imports_inside_functions():
    source = (PACKAGE / "backends" / "openvino.py").read_text()
    assert "    from .onnxruntime import exported" in source  # inside to_openvino
    assert "resnetkit.backends.onnxruntime" in imports_of(PACKAGE / "backends" / "openvino.py")
