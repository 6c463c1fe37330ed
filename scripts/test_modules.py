"""Run test modules one after another, each in a process of its own, forked from this one after the heavy imports.

    python scripts/test_modules.py REPORTS MODULE... [-- PYTEST ARGS]

Each module gets a fresh process (the native thread pools of PyTorch, ONNX Runtime and OpenVINO would otherwise pile
up in one long process), but not a fresh interpreter: this process imports torch, torchvision, pytest and resnetkit
once, as bench's fork server does (resnetkit.choose.fork_server), and forks a child per module that runs pytest on
it and ends with ``os._exit``. A new interpreter per module took about 5 s of imports and teardown on the 2-core
Zen 4, for each of 30 modules. The children inherit the frozen heap copy-on-write; no runtime thread exists yet
when they fork (the imports start none but OpenBLAS's, which handles fork).

Writes each module's JUnit report to REPORTS/<module name>.xml, and one line per module to REPORTS/exit-codes: the
module and its exit code (128 + N when signal N ended its process).
"""

from __future__ import annotations

import os
import sys


def run_module(module: str, pytest_args: list[str]) -> int:
    """``module``'s tests in a forked child; its exit code, as a shell would report it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import pytest

            code = int(pytest.main([module, *pytest_args]))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except KeyboardInterrupt:  # Ctrl-C reached the child too: let it end its session first
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    (reports, *modules), pytest_args = argv[:split], argv[split + 1:]
    import pytest  # noqa: F401
    import resnetkit.choose.fork_server  # noqa: F401  torch, the runtimes' glue and bench's code; freezes the heap
    import resnetkit.cli  # noqa: F401  every command module: what the CLI tests import

    with open(os.path.join(reports, "exit-codes"), "w") as out:
        for module in modules:
            report = os.path.join(reports, os.path.basename(module).removesuffix(".py") + ".xml")
            out.write(f"{module} {run_module(module, [f'--junitxml={report}', *pytest_args])}\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
