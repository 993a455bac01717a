"""A paper's claims checked on our runs: the suite's ``claims:``, one verdict each.

Each pair a claim makes (``harness.claims``) is tested per label budget with
the test behind the table's marks: the paired t-test on the per-seed differences of
the final models' errors (method − against, same split and seed), so the seed is the
unit of replication. The p-values of every tested pair of every claim form one Holm
family: a suite that lists many claims pays for them. Verdicts:

- **holds**: significant after Holm, in the claimed direction;
- **contradicted**: significant after Holm, in the other direction;
- **not shown**: neither; with the seeds it would take to show the observed effect
  (if it and the seeds' spread stayed as observed);
- **waiting**: not every planned seed of both methods is done (no test over the seeds
  that happened to finish), or a method is not in the report's plan.

``not_higher`` is a non-inferiority claim ("val error no worse"): its p is the
one-sided test of "higher by ``margin`` points or more"; it holds when that is
rejected after Holm, and is contradicted when the one-sided test of "higher by more
than the margin" rejects at alpha / the number of tested pairs (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from harness.claims import ClaimPair
from harness.columns import ERROR_COLUMNS
from harness.report.stats import holm, paired_t

CLAIMS_TITLE = "Claims checked"
OUTSIDE_PLAN = "not in this report's plan"
VERDICTS = ("holds", "contradicted", "not shown", "waiting")
CLAIM_COLUMNS = (
    "claim",
    "name",
    "labels",
    "method",
    "against",
    "metric",
    "direction",
    "margin",
    "seeds",
    "method_error",
    "against_error",
    "difference",  # mean over seeds of (method − against), points
    "ci_low",  # its 95% t-based CI
    "ci_high",
    "p",
    "p_holm",
    # not_higher only: one-sided p of "higher by more than the margin" (contradicted
    # where it is below alpha / the tested pairs: Bonferroni, as strict as Holm's first)
    "p_other_way",
    "verdict",
    "seeds_needed",  # for "not shown": seeds that would show the observed effect
    "note",
)
_MOST_SEEDS = 100  # beyond this, "seeds needed" says "more than 100"


def claim_table(
    pairs: Iterable[ClaimPair], labels_of: dict[int, list[str]], runs: pd.DataFrame, alpha: float
) -> pd.DataFrame:
    """One row per (pair, label budget): ``runs`` is ``final_errors``'s frame (its
    metric columns are the final models' errors, what the marks test pairs);
    ``labels_of`` gives each claim's budgets (empty: every budget in ``runs``)."""
    budgets = list(dict.fromkeys(runs["labels"]))
    rows = []
    for pair in pairs:
        for labels in labels_of.get(pair.claim) or budgets:
            rows.append(_pair_row(pair, labels, runs))
    table = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    if table.empty:
        return table
    table["p_holm"] = holm(table["p"])
    family = int(table["p"].notna().sum())
    for i, row in table.iterrows():
        if row["verdict"] != "waiting":
            table.loc[i, ["verdict", "seeds_needed"]] = _verdict(row, alpha, family)
    return table


def _seed_errors(runs: pd.DataFrame, method: str, labels: str, metric: str) -> pd.Series | None:
    """The final errors by seed of every planned run, or None if any is not done."""
    mine = runs[(runs["method"] == method) & (runs["labels"] == labels)]
    if (mine["status"] != "done").any() or metric not in mine:
        return None
    return mine.set_index("seed")[metric].astype(float)


def _pair_row(pair: ClaimPair, labels: str, runs: pd.DataFrame) -> dict:
    row = dict.fromkeys(CLAIM_COLUMNS, math.nan)
    row.update(
        claim=pair.claim + 1,
        name=pair.name,
        labels=labels,
        method=pair.method,
        against=pair.against,
        metric=pair.metric,
        direction=pair.direction,
        margin=pair.margin,
        seeds=0,
        verdict="waiting",
        note="",
    )
    planned = set(runs["method"])
    absent = [m for m in (pair.method, pair.against) if m not in planned]
    if absent:
        row["note"] = f"{' and '.join(absent)} {OUTSIDE_PLAN}"
        return row
    unplanned = [
        m for m in (pair.method, pair.against)
        if not ((runs["method"] == m) & (runs["labels"] == labels)).any()
    ]  # fmt: skip
    if unplanned:
        row["note"] = f"no run of {' or '.join(unplanned)} at {labels} labels in this plan"
        return row
    mine = _seed_errors(runs, pair.method, labels, pair.metric)
    theirs = _seed_errors(runs, pair.against, labels, pair.metric)
    if mine is None or theirs is None:
        row["note"] = "not every planned seed done"
        return row
    seeds = sorted(set(mine.index) & set(theirs.index))
    differences = (mine[seeds] - theirs[seeds]).to_numpy()
    if len(seeds) < 2 or np.isnan(differences).any():
        row["note"] = f"{len(seeds)} paired seed(s) with this column: the test needs 2"
        return row
    t = paired_t(differences)
    row.update(
        seeds=len(seeds),
        method_error=float(mine[seeds].mean()),
        against_error=float(theirs[seeds].mean()),
        difference=t["mean_difference"],
        ci_low=t["ci_low"],
        ci_high=t["ci_high"],
        p=_p(pair, differences, t["p"]),
        verdict="",
    )
    if pair.direction == "not_higher":
        row["p_other_way"] = _one_sided(differences - pair.margin, higher=True)
    return row


def _p(pair: ClaimPair, differences: np.ndarray, two_sided: float) -> float:
    """The pair's p: two-sided for lower/higher; for not_higher the one-sided test
    of "higher by the margin or more"."""
    if pair.direction != "not_higher":
        return two_sided
    return _one_sided(differences - pair.margin, higher=False)


def _one_sided(shifted: np.ndarray, *, higher: bool) -> float:
    """One-sided t-test p that the mean of ``shifted`` is above 0 (``higher``) or below."""
    se = shifted.std(ddof=1) / math.sqrt(len(shifted))
    mean = shifted.mean()
    if se == 0:
        return 0.0 if (mean > 0 if higher else mean < 0) else 1.0
    t = mean / se
    return float(stats.t.sf(t, len(shifted) - 1) if higher else stats.t.cdf(t, len(shifted) - 1))


def _verdict(row: pd.Series, alpha: float, family: int) -> tuple[str, object]:
    significant = row["p_holm"] < alpha
    if row["direction"] == "not_higher":
        if significant:
            return "holds", math.nan
        if min(1.0, row["p_other_way"] * family) < alpha:
            return "contradicted", math.nan
        return "not shown", _seeds_needed(row, alpha, family)
    right = row["difference"] < 0 if row["direction"] == "lower" else row["difference"] > 0
    if significant:
        return ("holds" if right else "contradicted"), math.nan
    return "not shown", _seeds_needed(row, alpha, family) if right else math.nan


def _seeds_needed(row: pd.Series, alpha: float, family: int) -> float:
    """The fewest seeds whose t-test would reject at alpha / family (Holm's largest
    multiplier: a bound that holds whatever the other pairs' p) for the observed mean
    difference and spread; nan where the observed effect points the other way or is
    zero, ``_MOST_SEEDS + 1`` where even that many would not do."""
    seeds = int(row["seeds"])
    spread = (row["ci_high"] - row["ci_low"]) / 2 / stats.t.ppf(0.975, seeds - 1)
    spread *= math.sqrt(seeds)  # the per-seed standard deviation
    one_sided = row["direction"] == "not_higher"
    effect = row["margin"] - row["difference"] if one_sided else abs(row["difference"])
    if not effect > 0:
        return math.nan
    level = alpha / max(family, 1) / (1 if one_sided else 2)
    for n in range(2, _MOST_SEEDS + 1):
        if stats.t.ppf(1 - level, n - 1) * spread / math.sqrt(n) < effect:
            return float(n)
    return float(_MOST_SEEDS + 1)


def claim_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: its verdict over its pairs (holds only if every pair holds;
    contradicted if any is; waiting while any waits) and the count per verdict."""
    rows = []
    for (claim, name), group in table.groupby(["claim", "name"], sort=False):
        counts = group["verdict"].value_counts()
        if counts.get("contradicted", 0):
            verdict = "contradicted"
        elif counts.get("waiting", 0):
            verdict = "waiting"
        elif counts.get("holds", 0) == len(group):
            verdict = "holds"
        else:
            verdict = "not shown"
        rows.append(
            {"claim": claim, "name": name, "verdict": verdict, "pairs": len(group)}
            | {v: int(counts.get(v, 0)) for v in VERDICTS}
        )
    return pd.DataFrame(rows)


def claims_markdown(table: pd.DataFrame, alpha: float) -> str:
    """The checklist for summary.md and the screen: a line per claim, then every pair."""
    titles = dict(ERROR_COLUMNS)
    family = int(table["p"].notna().sum())
    lines = [
        "Each pair is tested per label budget with the paired t-test on the per-seed "
        "differences of the final models' errors (method − against, points; negative: "
        f"the method errs less), Holm-corrected across the {family} tested pairs of all "
        f"claims (alpha = {alpha:g}). holds / contradicted: significant, in the claimed / "
        "the other direction; not shown: neither (with the seeds that would show the "
        "observed effect at alpha / pairs, were it and the seeds' spread to stay); "
        "waiting: not every planned seed of both done. A claim holds only where every "
        "pair holds.",
        "",
    ]
    for claim in claim_verdicts(table).to_dict("records"):
        mark = {"holds": "[x]", "contradicted": "[!]"}.get(claim["verdict"], "[ ]")
        counts = ", ".join(f"{claim[v]} {v}" for v in VERDICTS if claim[v])
        lines.append(
            f"- {mark} **{claim['claim']}. {claim['name']}**: {claim['verdict']} "
            f"({counts} of {claim['pairs']} pairs)"
        )
    lines += [
        "",
        "| claim | labels | method | against | metric | claimed | method | against "
        "| difference [95% CI] | p (Holm) | verdict |",
        "|--:|--:|:--|:--|:--|:--|--:|--:|:--|--:|:--|",
    ]
    outside = table["note"].str.endswith(OUTSIDE_PLAN)
    for row in table[~outside].itertuples(index=False):
        claimed = row.direction.replace("_", " ")
        if row.direction == "not_higher":
            claimed += f" (+{row.margin:g})"
        if row.verdict == "waiting":
            cells = ["", "", "", "", f"waiting: {row.note}"]
        else:
            cells = [
                f"{row.method_error:.2f}",
                f"{row.against_error:.2f}",
                f"{row.difference:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]",
                _p_text(row.p_holm),
                _verdict_text(row),
            ]
        lines.append(
            f"| {row.claim} | {row.labels} | {row.method} | {row.against} "
            f"| {titles[row.metric]} | {claimed} | " + " | ".join(cells) + " |"
        )
    if outside.any():
        methods = sorted(set(table.loc[outside, "method"]) | set(table.loc[outside, "against"]))
        lines += [
            "",
            f"{_pairs_wait(int(outside.sum()))} for methods this report's plan does not run "
            f"(among: {', '.join(methods)}); add them with `methods=`.",
        ]
    return "\n".join(lines) + "\n"


def _pairs_wait(n: int) -> str:
    return "1 pair waits" if n == 1 else f"{n} pairs wait"


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _verdict_text(row) -> str:
    if row.verdict != "not shown" or math.isnan(row.seeds_needed):
        return row.verdict
    if row.seeds_needed > _MOST_SEEDS:
        return f"not shown (more than {_MOST_SEEDS} seeds needed)"
    return f"not shown (≈{int(row.seeds_needed)} seeds needed)"
