"""The README and the documentation site say what the code does: the key reference is
generated from the schema and must be current, every key ``--help`` lists is described,
every page is in the site's navigation, the README stays a ten-minute read whose test
command is ``.ci/run``'s, and its method example trains."""

from __future__ import annotations

import importlib.util
import re

import yaml

from harness.cli import schema_keys
from harness.config import suite_schema
from tests.conftest import REPO, run_cli

README = (REPO / "README.md").read_text()


def _keys_doc():
    spec = importlib.util.spec_from_file_location("keys_doc", REPO / "tools" / "keys_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_key_reference_is_what_the_code_says_and_describes_every_key():
    keys_doc = _keys_doc()
    assert keys_doc.OUT.read_text() == keys_doc.render(), "python tools/keys_doc.py"
    rows = keys_doc.rows(suite_schema())
    listed = [key for key, _, _ in schema_keys(suite_schema())]  # what --help prints
    assert sorted(key for key, *_ in rows) == sorted(listed)
    undescribed = [key for key, _, _, text in rows if not text]
    assert not undescribed, f"keys without a comment in their schema: {undescribed}"
    pages = "\n".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    assert all(f"`{key}`" in pages for key in listed)


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def files(node):
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [f for value in node.values() for f in files(value)]
        return [f for item in node for f in files(item)]

    in_nav = files(config["nav"])
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(in_nav) == on_disk


def test_the_readme_is_short_and_its_test_command_is_the_ci_script():
    assert len(README.splitlines()) <= 250
    command = re.search(r"\*\*2\. Set up and pass.*?```bash\n(.*?)\n```", README, re.S)
    assert command and (REPO / ".ci" / "run").read_text().splitlines()[-1] == command.group(1)


def test_the_readmes_method_example_trains_through_the_cli(tmp_path):
    """The README's ``my_method`` as a plugin module: it trains on the default suite."""
    (example,) = re.findall(r"```python\n(.*?)```", README, re.S)
    (tmp_path / "readme_method.py").write_text(example)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = run_cli(
        "plugins=[readme_method]",
        "methods=[my_method]",
        "labels=[100]",
        "seeds=[0]",
        "schedule.train.epochs=2",
        "schedule.train.steps=5",
        "progress=false",
        "report.plots=false",
        f"results={tmp_path / 'results'}",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "| my_method |" in done.stdout
