"""The layout's promises (DESIGN, "The layout"): checked on the source, not by review.

The engine names no method; harness/ has no import cycle and no import placed
inside a function except of an optional or heavy dependency, named in the list
below; the report loads no torch.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "harness"
# what only a method family may name: the decoding pathways (FFCV's and json's "Decoder"s and
# JPEG decoding are another sense of the word) and the Ladder networks
METHOD_WORDS = re.compile(
    r"decoding|decoders?\b|\bsae\b|swwae|reconstruct|\brecon|invers|invert|ladder|rasmus"
)
OTHER_SENSES = re.compile(
    r"ffcv\.fields\.decoders|CenterCropRGBImageDecoder|IntDecoder|JSONDecodeError|UnicodeDecodeError"
)
# imports allowed inside a function: optional extras, and heavy modules only one path needs
# (TensorBoard pulls in protobuf; a run with logger=[csv] never loads it)
LATE_IMPORTS = {
    "ffcv",
    "numba",
    "submitit",
    "sklearn",
    "scipy.io",  # SVHN's .mat files alone (about 0.4 s at every start otherwise)
    "matplotlib",
    "harness.report",  # pandas, scipy, seaborn: 1.5 s of every start that builds no report
    "torch.utils.tensorboard",
    "harness.search",  # optuna: half a second of every start that searches nothing
}


def _sources() -> list[Path]:
    return sorted(HARNESS.rglob("*.py"))


def test_the_engine_names_no_method():
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            text = OTHER_SENSES.sub("", line)
            if METHOD_WORDS.search(text.lower()):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, (line, module) imported inside functions);
    imports under ``if TYPE_CHECKING:`` are for annotations and not counted."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    late: list[tuple[int, str]] = []
    package = (
        _module_name(path).rpartition(".")[0] if path.name != "__init__.py" else _module_name(path)
    )

    def names(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
        # `from harness.engine import distributed` imports a module too
        return [base] + [f"{base}.{alias.name}" for alias in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for name in names(child):
                    if in_function:
                        late.append((child.lineno, name))
                    else:
                        top.add(name)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return top, late


def test_no_import_is_placed_inside_a_function_but_optional_or_heavy_ones():
    found = []
    for path in _sources() + sorted((REPO / "methods").rglob("*.py")):
        for line, name in _imports(path)[1]:
            if not any(
                name == allowed or name.startswith(allowed + ".") for allowed in LATE_IMPORTS
            ):
                found.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not found, "\n".join(found)


def test_harness_has_no_import_cycle():
    modules = {_module_name(path): path for path in _sources()}
    graph = {
        name: {m for m in _imports(path)[0] if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how a package is built
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := walk(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_importing_the_report_loads_no_torch_and_no_model():
    code = (
        "import sys, harness.report; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith("
        "('harness.models', 'harness.engine', 'methods.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_the_launchers_registered_are_the_ones_the_config_accepts():
    from harness.config import LAUNCHER_NAMES
    from harness.launch import LAUNCHERS

    assert tuple(LAUNCHERS) == LAUNCHER_NAMES


def test_a_settings_section_cannot_take_an_engine_key():
    from dataclasses import dataclass

    import pytest

    from harness.config import register_settings

    with pytest.raises(ValueError, match="'optim' would replace the engine's own key"):

        @register_settings("optim")
        @dataclass
        class Shadow:
            lr: float = 1.0
