"""False-positive rate and power of the report's tests on simulated comparisons.

The table's marks must not flag a method that is only as good as the baseline.
This simulates many comparisons of a method with the baseline on one val set,
both trained with k seeds, and counts how often each test says p < alpha:

- val images have a difficulty shared by every run (logit-normal: logit of the
  error probability ~ N(a, image_std), a set for a mean error of ``--error``);
- each seed (split) moves both methods' error by a shared N(0, split_std) points
  (the pairing removes it), and each run by its own N(0, seed_std) points: the
  training variance that seed-to-seed differences are made of;
- given those, a run gets each image wrong independently with that probability;
- the method is the baseline's distribution (null: the false-positive rate), or
  ``--effect`` points lower (power).

Tests, all on the runs' per-example correctness (one comparison, so no Holm):
the paired t-test and Wilcoxon's signed-rank test on the per-seed error
differences, the two-level bootstrap (seeds, then images), and the two that
condition on the trained models: McNemar's exact test and the paired bootstrap
over images, both pooled over seeds. The row of the test behind the table's
marks (``harness.report.compare.MARKS_TEST``) is labelled ``(marks)``; goal: its
false-positive rate <= 0.06.

    python benchmarks/bench_stats_null.py                    # 4,000 comparisons per cell
    python benchmarks/bench_stats_null.py --seed-std 1.0 --images 50000 --sims 4000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize, special

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.report.compare import MARKS_TEST  # noqa: E402
from harness.report.stats import (  # noqa: E402
    across_seeds,
    hierarchical_bootstrap,
    mcnemar_p,
    paired_t,
)

TESTS = {
    "ttest": "paired t on per-seed differences",
    "wilcoxon": "Wilcoxon signed-rank on per-seed differences",
    "hierarchical_bootstrap": "two-level bootstrap (seeds, then images)",
    "mcnemar": "McNemar exact, seeds pooled (conditional)",
    "images_bootstrap": "paired bootstrap over images (conditional)",
}


def val_set(images: int, error: float, image_std: float, rng) -> tuple[np.ndarray, float]:
    """Per-image logits of the baseline's error probability (mean ``error`` %), and
    the slope d(mean error)/d(logit shift), to turn point offsets into logit shifts."""
    z = rng.normal(0.0, image_std, images)
    a = optimize.brentq(lambda a: special.expit(a + z).mean() - error / 100, -30, 30)
    p = special.expit(a + z)
    return (a + z).astype(np.float32), float(np.mean(p * (1 - p)))


def simulate(options, logits, slope, seeds: int, effect: float, rng) -> tuple[np.ndarray, ...]:
    """(b, c) discordant counts per comparison and seed, shape (sims, seeds), and
    each run's error in % (sims, 2, seeds)."""
    sims, images = options.sims, len(logits)
    b = np.empty((sims, seeds), np.int64)
    c = np.empty((sims, seeds), np.int64)
    errors = np.empty((sims, 2, seeds))
    chunk = max(1, 4_000_000 // (2 * seeds * images))
    for start in range(0, sims, chunk):
        part = slice(start, min(sims, start + chunk))
        size = part.stop - part.start
        split = rng.normal(0.0, options.split_std, (size, 1, seeds))
        own = rng.normal(0.0, options.seed_std, (size, 2, seeds))
        points = split + own - np.array([0.0, effect])[None, :, None]
        shift = (points / 100.0 / slope).astype(np.float32)
        wrong = rng.random((size, 2, seeds, images), dtype=np.float32) < special.expit(
            logits + shift[..., None]
        )
        b[part] = np.count_nonzero(~wrong[:, 0] & wrong[:, 1], axis=-1)
        c[part] = np.count_nonzero(wrong[:, 0] & ~wrong[:, 1], axis=-1)
        errors[part] = 100.0 * wrong.mean(axis=-1)
    return b, c, errors


def p_values(b, c, images: int, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Each test's two-sided p per simulated comparison."""
    n = np.full_like(b, images)
    differences = 100.0 * (b - c) / images  # method error - baseline error, per seed
    boot = dict(resamples=resamples, seed=seed)
    return {
        "ttest": paired_t(differences)["p"],
        "wilcoxon": across_seeds(np.zeros_like(differences), differences)["wilcoxon_p"],
        "hierarchical_bootstrap": hierarchical_bootstrap(b, c, n, **boot)["p"],
        "mcnemar": mcnemar_p(b.sum(axis=-1), c.sum(axis=-1)),
        "images_bootstrap": hierarchical_bootstrap(b, c, n, resample_seeds=False, **boot)["p"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000, help="comparisons per cell")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--images", type=int, default=10_000, help="val images")
    parser.add_argument("--error", type=float, default=20.0, help="baseline error, %%")
    parser.add_argument("--image-std", type=float, default=4.0, help="logit sd of difficulty")
    parser.add_argument("--seed-std", type=float, default=0.7, help="a run's own sd, points")
    parser.add_argument("--split-std", type=float, default=0.5, help="shared per seed, points")
    parser.add_argument("--effect", type=float, default=1.0, help="power: method lower, points")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--rng", type=int, default=0)
    options = parser.parse_args()
    tic = time.perf_counter()
    rng = np.random.default_rng(options.rng)
    logits, slope = val_set(options.images, options.error, options.image_std, rng)
    rates: dict[tuple[str, str, int], float] = {}
    realized = None
    for case, effect in (("null", 0.0), ("power", options.effect)):
        for seeds in options.seeds:
            b, c, errors = simulate(options, logits, slope, seeds, effect, rng)
            if realized is None:
                realized = describe(b, errors, options.images)
            for test, p in p_values(b, c, options.images, options.resamples, options.rng).items():
                rates[case, test, seeds] = float(np.mean(p < options.alpha))
    print_table(options, rates, realized, time.perf_counter() - tic)


def describe(b, errors, images: int) -> str:
    """What the simulated runs look like, to check the parameters are realistic."""
    baseline = errors[:, 0]
    spread = baseline.std(axis=-1, ddof=1).mean() if baseline.shape[-1] > 1 else float("nan")
    disagree = 100.0 * 2 * b.mean() / images  # b and c have the same mean under the null
    return (
        f"realized: baseline error {baseline.mean():.2f}%, a method's error sd across seeds "
        f"{spread:.2f} points (image sampling included), two runs disagree on "
        f"{disagree:.1f}% of val images"
    )


def print_table(options, rates, realized: str, seconds: float) -> None:
    se = np.sqrt(options.alpha * (1 - options.alpha) / options.sims)
    print(
        f"{options.sims} simulated comparisons per cell; {options.images} val images, baseline "
        f"error {options.error:g}%, image difficulty logit sd {options.image_std:g}, "
        f"seed sd {options.seed_std:g} points per run + {options.split_std:g} shared per "
        f"seed, power at {options.effect:g} point lower; alpha = {options.alpha:g} "
        f"(Monte Carlo se of a rate near alpha: {se:.3f}); bootstrap resamples "
        f"{options.resamples}"
    )
    print(realized + "\n")
    seeds = options.seeds
    header = [f"FPR, {k} seeds" for k in seeds] + [f"power, {k} seeds" for k in seeds]
    print("| test | " + " | ".join(header) + " |")
    print("|:--|" + "--:|" * len(header))
    for test, title in TESTS.items():
        name = f"{title} (marks)" if test == MARKS_TEST else title
        cells = [rates["null", test, k] for k in seeds] + [rates["power", test, k] for k in seeds]
        print(f"| {name} | " + " | ".join(f"{r:.3f}" for r in cells) + " |")
    marks = [rates["null", MARKS_TEST, k] for k in seeds]
    verdict = "meets" if max(marks) <= 0.06 else "MISSES"
    print(f"\nmarks test false-positive rate {max(marks):.3f}: {verdict} the goal <= 0.06")
    print(f"wall time {seconds:.1f} s")


if __name__ == "__main__":
    main()
