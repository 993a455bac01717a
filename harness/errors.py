"""The one exception type the CLI turns into a single line and exit status 2.

Everything a user can get wrong (a name, a key, a type, a path, a label budget,
a corrupt file) is raised as ``UsageError`` *before* any run starts, so the
CLI can refuse cleanly without having touched the results root.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(Exception):
    """Bad input from the user; the message names the value and the valid choices."""


def unknown(kind: str, value: object, choices: Iterable[str]) -> UsageError:
    """An error for a name that is not one of ``choices``."""
    listed = ", ".join(sorted(choices)) or "(none)"
    return UsageError(f"unknown {kind} {value!r}; valid choices: {listed}")
