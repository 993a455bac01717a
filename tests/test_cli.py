"""One command-line layer (harness.cli): every entry point answers --help with its keys,
and bad input the same way (one line, exit 2, nothing written)."""

from __future__ import annotations

import importlib

import pytest
from conftest import run_cli, tree

from harness.cli import key_values, typed_keys
from harness.errors import UsageError

ENTRY_POINTS = {
    "harness.run": ["suite=", "optim.batch_size=", "decoding.weights="],
    "harness.report": ["suite=", "report.last_k="],
    "harness.status": ["suite=", "slurm.time_min="],
    "harness.data.prepare": ["prepare imagenet", "short_side=256", "prepare demo"],
    "methods.decoding.invert": ["layer"],
}


def _main(module: str):
    """The entry point's ``main`` (in this process: a subprocess per case would cost
    seconds of imports each)."""
    name = f"{module}.__main__" if module == "harness.report" else module
    return importlib.import_module(name).main


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_prints_help_listing_its_keys(module, capsys):
    assert _main(module)(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module}")
    for key in ENTRY_POINTS[module]:
        assert key in out, (module, key)


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_refuses_a_bare_word_in_one_line(module, tmp_path, capsys):
    args = ["demo", "oops"] if module == "harness.data.prepare" else ["oops", f"results={tmp_path}"]
    assert _main(module)(args) == 2
    assert capsys.readouterr().err == "error: argument 'oops' is not of the form key=value\n"
    assert tree(tmp_path) == {}


def test_python_m_help_is_the_same_text_and_no_traceback():
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: python -m harness.run")


def test_one_parser_for_every_command():
    assert key_values(["a=1", "b.c=[2,3]", "d="]) == [("a", "1"), ("b.c", "[2,3]"), ("d", "")]
    with pytest.raises(UsageError, match="'=x' is not of the form key=value"):
        key_values(["=x"])
    assert typed_keys(["n=3"], {"n": int}, "cmd") == {"n": 3}
    with pytest.raises(UsageError, match="cmd: n='x' is not a valid int"):
        typed_keys(["n=x"], {"n": int}, "cmd")
    with pytest.raises(UsageError, match="unknown key of cmd 'm'; valid choices: n"):
        typed_keys(["m=1"], {"n": int}, "cmd")
