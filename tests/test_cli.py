"""One command-line layer (harness.cli): every entry point answers --help with its keys,
and bad input the same way (one line, exit 2, nothing written)."""

from __future__ import annotations

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


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_prints_help_listing_its_keys(module):
    result = run_cli("--help", module=module)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module}")
    for key in ENTRY_POINTS[module]:
        assert key in result.stdout, (module, key)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_refuses_a_bare_word_in_one_line(module, tmp_path):
    args = ["demo", "oops"] if module == "harness.data.prepare" else ["oops", f"results={tmp_path}"]
    result = run_cli(*args, module=module)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: argument 'oops' is not of the form key=value"
    assert tree(tmp_path) == {}


def test_one_parser_for_every_command():
    assert key_values(["a=1", "b.c=[2,3]", "d="]) == [("a", "1"), ("b.c", "[2,3]"), ("d", "")]
    with pytest.raises(UsageError, match="'=x' is not of the form key=value"):
        key_values(["=x"])
    assert typed_keys(["n=3"], {"n": int}, "cmd") == {"n": 3}
    with pytest.raises(UsageError, match="cmd: n='x' is not a valid int"):
        typed_keys(["n=x"], {"n": int}, "cmd")
    with pytest.raises(UsageError, match="unknown key of cmd 'm'; valid choices: n"):
        typed_keys(["m=1"], {"n": int}, "cmd")
