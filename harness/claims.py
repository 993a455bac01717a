"""A suite's claims (``claims:``, ``harness.config.schema.Claim``), expanded into the
pairs the report tests. Imports no torch: the report uses it too.

A claim names methods (or groups of them, the suite's ``groups:``) and what they are
set against. One side of one name is set against each name of the other side; two
lists of equal length pair in order (a family's variants against another's, one by
one). The expansion is checked when the suite loads, so a claim that names an unknown
method, group, metric or direction is one line and exit 2 before any run starts, and
the report (``harness.report.claims``) tests exactly the pairs checked here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from harness.columns import ERROR_METRICS
from harness.errors import UsageError, unknown

# how a claim says its methods compare with what they are set against: their error is
# lower / higher, or not higher by a margin (non-inferiority; harness.report.claims)
CLAIM_DIRECTIONS = ("lower", "higher", "not_higher")


@dataclass(frozen=True)
class ClaimPair:
    """One comparison a claim makes: ``method`` against ``against`` on ``metric``."""

    claim: int  # the claim's index in the suite's list
    name: str
    method: str
    against: str
    metric: str
    direction: str
    margin: float


def _names(
    side: Iterable[str], groups: Mapping[str, Iterable[str]], methods: list[str] | None, key: str
) -> list[str]:
    """A claim side's method names, its groups spelled out."""
    out = []
    for name in side:
        if name in groups:
            out += list(groups[name])
        elif methods is None or name in methods:
            out.append(name)
        else:
            raise unknown(f"method or group in {key}", name, [*sorted(groups), *sorted(methods)])
    if not out:
        raise UsageError(f"{key} is empty: name at least one method or group")
    return out


def expand_claims(
    claims: Iterable, groups: Mapping, methods: list[str] | None = None
) -> list[ClaimPair]:
    """Every pair the suite's ``claims`` test, in order. Given ``methods`` (the registered
    names) every name is checked, and a bad claim or group raises a one-line
    ``UsageError``; without, the names are taken as checked (the report: it loads no
    method)."""
    for group, members in groups.items():
        if methods is None:
            break
        if group in methods:
            raise UsageError(f"groups.{group}: a group may not take a method's name")
        for member in members:
            if member not in methods:
                raise unknown(f"method in groups.{group}", member, sorted(methods))
    pairs = []
    for i, claim in enumerate(claims):
        key = f"claims[{i}]"
        if not claim.name:
            raise UsageError(f"{key}.name is empty: say in a few words what the paper claims")
        if claim.metric not in ERROR_METRICS:
            raise unknown(f"{key}.metric", claim.metric, list(ERROR_METRICS))
        if claim.direction not in CLAIM_DIRECTIONS:
            raise unknown(f"{key}.direction", claim.direction, list(CLAIM_DIRECTIONS))
        if not (math.isfinite(claim.margin) and claim.margin >= 0):
            raise UsageError(f"{key}.margin must be a finite number >= 0, got {claim.margin}")
        if claim.margin and claim.direction != "not_higher":
            raise UsageError(
                f"{key}.margin={claim.margin} is for direction not_higher only; "
                f"this claim's direction is {claim.direction}"
            )
        mine = _names(claim.methods, groups, methods, f"{key}.methods")
        theirs = _names(claim.against, groups, methods, f"{key}.against")
        if len(theirs) == 1:
            theirs = theirs * len(mine)
        elif len(mine) == 1:
            mine = mine * len(theirs)
        elif len(mine) != len(theirs):
            raise UsageError(
                f"{key}: methods ({len(mine)}: {', '.join(mine)}) and against "
                f"({len(theirs)}: {', '.join(theirs)}) must pair in order, or one side "
                "must name a single method"
            )
        # a group may name a method twice to pair in order; each pair is tested once
        for method, other in dict.fromkeys(zip(mine, theirs, strict=True)):
            if method == other:
                raise UsageError(f"{key} sets {method} against itself")
            pairs.append(
                ClaimPair(i, claim.name, method, other, claim.metric, claim.direction,
                          float(claim.margin))
            )  # fmt: skip
    return pairs
