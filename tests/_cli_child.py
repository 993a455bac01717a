"""The CLI's ``main()`` in a child of a fork server that has imported torch and the
harness once (``tests.conftest.run_cli``): what ``python -m <module> <args>`` does, without
the three seconds of interpreter and torch start-up a new process pays (a few hundred
CLI calls made that a third of the suite).

The server only imports, never computes, so its children start with no thread pool
to inherit (OpenMP's does not survive a fork once used). Not a test module (no
``test_`` prefix)."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import traceback

import torch  # noqa: F401  (the imports the server pays once)
import torch._dynamo  # noqa: F401  (what building the first optimizer imports: 2 s)

import harness.engine.lifecycle  # noqa: F401
import harness.report.__main__  # noqa: F401
import harness.report.plots  # noqa: F401  (seaborn, for the runs that draw)
import harness.run  # noqa: F401
import harness.status  # noqa: F401
from harness.plugins import import_plugins

for _role in ("settings", "method", "report"):  # every method of methods/, registered
    import_plugins(_role)

ENTRY = {"harness.report": "harness.report.__main__"}


def run_main(
    module: str, argv: list[str], cwd: str, environ: dict[str, str], stdout: str, stderr: str
) -> None:
    """``module``'s ``main()`` with ``sys.argv = [module, *argv]`` in ``cwd`` under
    ``environ`` (the caller's, not the server's: a fixture may have set SLURM's since),
    its output in the files ``stdout`` and ``stderr``; exits with its status, after the
    ``atexit`` functions an interpreter would run."""
    code = 1
    try:
        for fd, path in ((1, stdout), (2, stderr)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = [module, *argv]
        try:
            code = importlib.import_module(ENTRY.get(module, module)).main() or 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:  # sys.exit("message"), as the interpreter prints it
                print(stop.code, file=sys.stderr)
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
