"""Claims as suite data (``claims:``, ``groups:``): expansion, checks, the report's test.

The statistics are checked against scipy on hand-made final errors; the suites'
claims load and expand to the pairs the poster names; bad claims are one line and
exit 2 before anything is written. A real run of the decoding suites' code path
with claims is in ``test_imagenet.py`` (generated JPEGs through imagenet_full).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy import stats

from harness.claims import expand_claims
from harness.config import load_config
from harness.errors import UsageError
from harness.report.claims import claim_table, claim_verdicts, claims_markdown
from harness.report.stats import holm

ALPHA = 0.05


def _runs(errors: dict[str, list[float]], labels: str = "100", status: dict | None = None):
    """A final_errors-like frame: one row per method and seed, top1_val as given."""
    rows = []
    for method, values in errors.items():
        for seed, value in enumerate(values):
            done = (status or {}).get((method, seed), "done")
            rows.append(
                {"method": method, "labels": labels, "seed": seed, "status": done,
                 "top1_val": value, "top1_train": value / 2}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _claims(*entries: str) -> list[str]:
    return [f"claims=[{', '.join(entries)}]"]


def _pairs(cfg):
    return expand_claims(cfg.claims, cfg.groups)


def test_the_decoding_suites_claims_expand_to_the_posters_pairs():
    for suite in ("imagenet_full", "fashion_mnist"):
        cfg = load_config([f"suite={suite}"])
        pairs = _pairs(cfg)
        by_claim = {}
        for pair in pairs:
            by_claim.setdefault(pair.claim, []).append((pair.method, pair.against))
        decoding = ["sae_first", "sae_all", "sae_layerwise"]
        decoding += ["swwae_first", "swwae_all", "swwae_layerwise"]
        assert by_claim[0] == [(m, "baseline") for m in decoding]
        assert by_claim[1] == by_claim[0] and pairs[6].metric == "top1_train"
        assert by_claim[2] == [
            ("swwae_first", "sae_first"),
            ("swwae_all", "sae_all"),
            ("swwae_layerwise", "sae_layerwise"),
        ]
        assert sorted(by_claim[3]) == sorted(
            (f"{kind}_layerwise", f"{kind}_{other}")
            for kind in ("sae", "swwae")
            for other in ("first", "all")
        )
        assert by_claim[4] == by_claim[3] and pairs[-1].direction == "not_higher"


def test_each_verdict_from_the_seed_level_paired_t_test_with_holm_across_claims():
    base = [20.0, 21.0, 22.0, 20.5, 21.5]
    errors = {
        "baseline": base,
        "pi_model": list(np.add(base, [0.1, -0.1, 0.05, 0.0, -0.05]) - 1.0),
        "vat": list(np.add(base, [0.2, -0.2, 0.1, 0.0, -0.1]) + 2.0),
        "mean_teacher": list(np.add(base, [-1.0, 0.8, -0.9, 0.5, -0.6])),
    }
    cfg = load_config(
        [
            "groups={others: [pi_model, vat, mean_teacher]}",
            *_claims("{name: all lower, methods: [others], against: [baseline]}"),
        ]
    )
    table = claim_table(_pairs(cfg), {}, _runs(errors), ALPHA)
    assert list(table["method"]) == ["pi_model", "vat", "mean_teacher"]
    for row in table.itertuples():
        differences = np.subtract(errors[row.method], base)
        scipy = stats.ttest_rel(errors[row.method], base)
        assert row.difference == pytest.approx(differences.mean())
        assert row.p == pytest.approx(scipy.pvalue)
        assert row.seeds == 5
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p"]))
    assert list(table["verdict"]) == ["holds", "contradicted", "not shown"]
    noisy = table.iloc[2]
    # the seeds that would show the observed effect at alpha / 3 (two-sided), by hand
    spread = np.std(np.subtract(errors["mean_teacher"], base), ddof=1)
    effect = abs(noisy.difference)
    needed = next(
        n
        for n in range(2, 101)
        if stats.t.ppf(1 - ALPHA / 3 / 2, n - 1) * spread / math.sqrt(n) < effect
    )
    assert noisy.seeds_needed == needed > 5
    assert claim_verdicts(table).iloc[0]["verdict"] == "contradicted"
    text = claims_markdown(table, ALPHA)
    assert "- [!] **1. all lower**: contradicted (1 holds, 1 contradicted, 1 not shown" in text
    assert f"not shown (≈{needed} seeds needed)" in text


def test_a_claim_waits_for_every_planned_seed_and_for_methods_outside_the_plan():
    errors = {"baseline": [20.0, 21.0, 22.0], "vat": [19.0, 20.0, 21.0]}
    runs = _runs(errors, status={("vat", 2): "running"})
    cfg = load_config(
        _claims(
            "{name: a, methods: [vat], against: [baseline]}",
            "{name: b, methods: [sae_first], against: [baseline]}",
        )
    )
    table = claim_table(_pairs(cfg), {}, runs, ALPHA)
    assert list(table["verdict"]) == ["waiting", "waiting"]
    assert list(table["note"]) == [
        "not every planned seed done",
        "sae_first not in this report's plan",
    ]
    assert table["p"].isna().all()
    text = claims_markdown(table, ALPHA)
    assert "| waiting: not every planned seed done |" in text
    assert "| sae_first |" not in text  # outside the plan: one line, not a row
    assert "1 pair waits for methods this report's plan does not run (among: baseline, " in text


def test_not_higher_is_a_non_inferiority_test_against_its_margin():
    base = [20.0, 21.0, 22.0, 20.5]
    errors = {
        "baseline": base,
        "pi_model": list(np.add(base, [0.05, -0.05, 0.02, -0.02])),
        "vat": list(np.add(base, [0.05, -0.05, 0.02, -0.02]) + 2),
    }
    cfg = load_config(
        _claims("{name: no worse, methods: [pi_model, vat], against: [baseline], "
                "direction: not_higher, margin: 0.5}")
    )  # fmt: skip
    table = claim_table(_pairs(cfg), {}, _runs(errors), ALPHA)
    shifted = np.subtract(errors["pi_model"], base) - 0.5
    one_sided = stats.ttest_1samp(shifted, 0.0, alternative="less").pvalue
    assert table.iloc[0]["p"] == pytest.approx(one_sided)
    assert list(table["verdict"]) == ["holds", "contradicted"]
    # contradicted: "higher than the margin", one-sided, at alpha / the 2 tested pairs
    worse = np.subtract(errors["vat"], base) - 0.5
    against = stats.ttest_1samp(worse, 0.0, alternative="greater").pvalue
    assert table.iloc[1]["p_other_way"] == pytest.approx(against) and 2 * against < ALPHA


def test_a_group_that_names_a_method_twice_to_pair_in_order_tests_each_pair_once():
    cfg = load_config(
        [
            "groups={twice: [vat, pi_model, vat, pi_model]}",
            *_claims("{name: a, methods: [twice], against: [baseline]}"),
        ]
    )
    assert [(p.method, p.against) for p in _pairs(cfg)] == [
        ("vat", "baseline"),
        ("pi_model", "baseline"),
    ]


def test_a_claim_speaks_of_its_own_budgets_only():
    runs = pd.concat(
        [
            _runs({"baseline": [20.0, 21.0], "vat": [19.0, 20.5]}, labels="100"),
            _runs({"baseline": [10.0, 11.0], "vat": [9.0, 10.5]}, labels="1000"),
        ]
    )
    cfg = load_config(_claims("{name: a, methods: [vat], labels: [1000]}"))
    assert list(cfg.claims[0].labels) == ["1000"]
    table = claim_table(_pairs(cfg), {0: ["1000"]}, runs, ALPHA)
    assert list(table["labels"]) == ["1000"]
    table = claim_table(_pairs(cfg), {0: ["500"]}, runs, ALPHA)
    assert list(table["verdict"]) == ["waiting"]
    assert list(table["note"]) == ["no run of vat or baseline at 500 labels in this plan"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            _claims("{name: a, methods: [sae_frist]}"),
            "unknown method or group in claims[0].methods 'sae_frist'; valid choices: ",
        ),
        (
            _claims("{name: a, methods: [sae_first], metric: top1_test}"),
            "unknown claims[0].metric 'top1_test'; valid choices: dense_top1_val,",
        ),
        (
            _claims("{name: a, methods: [sae_first], direction: better}"),
            "unknown claims[0].direction 'better'; valid choices: higher, lower, not_higher",
        ),
        (_claims("{methods: [sae_first]}"), "claims[0].name is empty"),
        (_claims("{name: a, methods: []}"), "claims[0].methods is empty"),
        (
            _claims("{name: a, methods: [sae_first, sae_all], against: [pi_model, vat, ladder]}"),
            "claims[0]: methods (2: sae_first, sae_all) and against (3: pi_model, vat, ladder) "
            "must pair in order",
        ),
        (
            _claims("{name: a, methods: [sae_first], margin: 1}"),
            "claims[0].margin=1.0 is for direction not_higher only",
        ),
        (
            _claims("{name: a, methods: [sae_first], direction: not_higher, margin: -1}"),
            "claims[0].margin must be a finite number >= 0, got -1.0",
        ),
        (_claims("{name: a, methods: [baseline]}"), "claims[0] sets baseline against itself"),
        (_claims("{name: a, methods: [sae_first], labels: [lots]}"), "claims[0].labels=['lots']"),
        (_claims("{name: a, methods: [sae_first], versus: [vat]}"), "key of a `claims` entry"),
        (["groups={g: [sae_frist]}"], "unknown method in groups.g 'sae_frist'"),
        (["groups={vat: [sae_first]}"], "groups.vat: a group may not take a method's name"),
        (["claims={name: a}"], "claims in the command line must be a list of entries"),
    ],
)
def test_a_bad_claim_is_a_one_line_usage_error(args, message):
    with pytest.raises(UsageError) as error:
        load_config(args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_claim_exits_2_before_anything_is_written(results):
    bad = run_cli(f"results={results}", *_claims("{name: a, methods: [sae_first], metric: x}"))
    assert bad.returncode == 2 and not results.exists()
    assert bad.stderr.count("\n") == 1 and "unknown claims[0].metric 'x'" in bad.stderr
