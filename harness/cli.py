"""The command-line layer every ``python -m harness.*`` entry point shares.

One ``key=value`` parser (``key_values``), one error handler and one ``--help``
(``run_command``): a ``UsageError`` is one line on stderr and exit status 2,
before any work; ``--help`` lists the command's keys. Commands that read a suite
list the suite's keys (``suite_keys``), their defaults and types, from the schema
itself, so the help cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError, unknown

HELP_FLAGS = ("-h", "--help")


def key_values(argv: list[str]) -> list[tuple[str, str]]:
    """``["a=1", "b.c=[2,3]"]`` -> ``[("a", "1"), ("b.c", "[2,3]")]``; anything else
    is a UsageError naming the argument."""
    pairs = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {arg!r} is not of the form key=value")
        pairs.append((key, value))
    return pairs


def boolean(value: str) -> bool:
    """A key=value flag: true/false (or 1/0, yes/no); ValueError otherwise (not
    Python's bool(), to which "false" is true)."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if value.lower() not in words:
        raise ValueError(value)
    return words[value.lower()]


def typed_keys(argv: list[str], allowed: dict[str, type], command: str) -> dict[str, Any]:
    """``argv`` as this command's keys only (typed by ``allowed``); any other key is a
    UsageError listing the valid ones."""
    own, rest = own_keys(argv, allowed, command)
    if rest:
        raise unknown(f"key of {command}", rest[0].partition("=")[0], allowed)
    return own


def own_keys(
    argv: list[str], allowed: dict[str, type], command: str
) -> tuple[dict[str, Any], list[str]]:
    """Split ``argv`` into this command's own keys (typed by ``allowed``) and the rest
    (the suite's keys, for ``load_config``). A bad value is a UsageError."""
    own: dict[str, Any] = {}
    rest = []
    for key, value in key_values(argv):
        if key not in allowed:
            rest.append(f"{key}={value}")
            continue
        kind = allowed[key]
        try:
            own[key] = kind(value)
        except ValueError:
            raise UsageError(f"{command}: {key}={value!r} is not a valid {kind.__name__}") from None
    return own, rest


@dataclass(frozen=True)
class Command:
    """What ``--help`` says of an entry point."""

    usage: str  # "python -m harness.run [suite=NAME] [key=value ...]"
    summary: str  # one paragraph
    keys: list[tuple[str, str]] = field(default_factory=list)  # (key=default, what it does)
    # the suite schema (harness.config.suite_schema), for commands that read a suite
    schema: Callable[[], type] | None = None

    def help_text(self) -> str:
        lines = [f"usage: {self.usage}", "", textwrap.fill(self.summary.strip(), 88), ""]
        if self.keys:
            lines.append("keys:")
            width = max(len(key) for key, _ in self.keys)
            lines += [f"  {key:<{width}}  {text}" for key, text in self.keys]
            lines.append("")
        if self.schema is not None:
            lines.append("suite keys (key=default  type), dotted for nesting, lists in brackets:")
            lines += [
                f"  {key}={default!r}  {kind}" for key, default, kind in schema_keys(self.schema())
            ]
            lines.append("  schedule.<stage>.{epochs,lr,steps,eval_every}: each stage's length")
        return "\n".join(lines)


def schema_keys(schema: type, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, type) of every leaf of a dataclass schema."""
    for key, default, kind, _, _ in schema_leaves(schema, prefix):
        yield key, default, kind


def schema_leaves(schema: type, prefix: str = "") -> Iterator[tuple[str, Any, str, type, str]]:
    """``schema_keys`` with, for each leaf, the dataclass that declares it and its field
    name (where its comment is: ``tools/keys_doc.py``)."""
    for spec in dataclasses.fields(schema):
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = None
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(default):
            yield from schema_leaves(type(default), f"{key}.")
        elif spec.name != "schedule":
            kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
            yield key, default, kind, schema, spec.name


def run_command(command: Command, body: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Run ``body(argv)``: ``--help`` prints the command's help (exit 0); a UsageError
    raised before any work is one line on stderr, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in HELP_FLAGS for arg in argv):
        print(command.help_text())
        return 0
    try:
        return body(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
