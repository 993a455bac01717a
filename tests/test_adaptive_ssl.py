"""The methods since FixMatch (issue 35): each one's targets and weights equal a
hand computation written from USB's reference code, their terms train the network and
nothing else, their running state survives a checkpoint bit for bit, and they run
through the CLI in process, after a SIGKILL, and as SLURM jobs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.alignment import DistributionAlignment
from harness.data import augment_batch, normalize, rand_augment
from harness.errors import UsageError
from harness.method import Batch, Stage, get_method
from methods.freematch import fairness_term
from tests.conftest import assert_same_run, kill_when, run_cli
from tests.test_ssl import SHORT, SSL_METHODS, _records, built, digits, fitted, real_batch

ADAPTIVE = (
    *("flexmatch", "freematch", "softmatch", "uda", "adamatch", "defixmatch", "dash"),
    *("remixmatch", "crmatch", "simmatch", "comatch"),
)
STATEFUL = ("flexmatch", "freematch", "softmatch", "adamatch", "dash", "remixmatch")
STATEFUL += ("simmatch", "comatch")
TRAIN = Stage("train", unlabeled=True)
# mu 2; Dash's warm-up and ρ's period in steps of these short runs
SHORT_MU = [f"{name}.mu=2" for name in ADAPTIVE] + ["dash.warmup_steps=4", "dash.period_steps=4"]


def with_labeled_views(batch: Batch, method, cfg, dataset) -> Batch:
    """The labeled images' extra views (DeFixMatch's strong one), made from the same
    real images as ``real_batch``'s labeled ones."""
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    images = dataset.train.images[: len(batch.x)]
    generator = torch.Generator().manual_seed(1)
    for view in method.labeled_extra_views:
        crops = augment_batch(images, cfg.data.crop, cfg.data.hflip, generator)
        if view == "strong":
            crops = rand_augment(crops, generator)
        batch.x_views.append(normalize(crops, mean, std))
    return batch


def probs_batch(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------ terms and gradients


@pytest.mark.parametrize("name", ADAPTIVE)
def test_each_ones_terms_are_finite_and_train_the_network_not_its_ema(name):
    cfg, dataset = digits(*SHORT_MU)
    method, model = built(cfg, dataset, name)
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    batch.u_index, batch.pool_size = torch.arange(64), 100
    with_labeled_views(batch, method, cfg, dataset)
    terms = method.loss(model, TRAIN, batch)
    expected = {"cls", "consistency" if name == "uda" else "pseudo"}
    expected |= {"freematch": {"fairness"}, "defixmatch": {"debias"}}.get(name, set())
    if name == "remixmatch":
        expected = {"cls", "mixed", "pre_mixup", "rotation"}
    if name == "crmatch":
        expected = {"cls", "pseudo", "features", "rotation"}
    expected |= {"simmatch": {"instance"}, "comatch": {"contrast"}}.get(name, set())
    assert set(terms) == expected
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in terms.values())
    sum(terms.values()).backward()
    trained = list(method.parameters(model, TRAIN))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad is None for p in model.ema.parameters())
    state = method.state_dict()
    assert bool(state) == (name in STATEFUL)
    assert all(not t.requires_grad for t in _tensors(state))  # statistics, never trained


def _tensors(state: dict) -> list[torch.Tensor]:
    found = []
    for value in state.values():
        found += _tensors(value) if isinstance(value, dict) else [value]
    return [t for t in found if isinstance(t, torch.Tensor)]


# ------------------------------------------------------------------ hand computations


def flexmatch_by_hand(steps, pool_size, classes, tau, warmup=True):
    """USB's FlexMatchThresholdingHook, transcribed: a Counter over the records."""
    selected = [-1] * pool_size
    acc = [0.0] * classes
    masks = []
    for probs, index in steps:
        mask = []
        for row in probs.tolist():
            top = max(row)
            c = row.index(top)
            mask.append(1.0 if top >= tau * (acc[c] / (2.0 - acc[c])) else 0.0)
        for row, i in zip(probs.tolist(), index, strict=True):
            if max(row) >= tau:
                selected[i] = row.index(max(row))
        counter = Counter(selected)
        if max(counter.values()) < pool_size:
            if warmup:
                acc = [counter[c] / max(counter.values()) for c in range(classes)]
            else:
                without = {k: v for k, v in counter.items() if k != -1}
                acc = [counter[c] / max(without.values()) for c in range(classes)]
        masks.append(mask)
    return masks, selected


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatchs_class_thresholds_follow_the_records_as_the_reference(warmup):
    cfg, _ = digits(f"flexmatch.warmup={str(warmup).lower()}", "flexmatch.threshold=0.8")
    method, _ = built(cfg, digits()[1], "flexmatch")
    steps = [
        (probs_batch([[0.9, 0.05, 0.05], [0.3, 0.4, 0.3], [0.1, 0.85, 0.05]]), [0, 1, 2]),
        (probs_batch([[0.5, 0.45, 0.05], [0.05, 0.9, 0.05], [0.82, 0.1, 0.08]]), [3, 4, 5]),
        (probs_batch([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]), [0, 6, 1]),
        (probs_batch([[0.45, 0.5, 0.05], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]]), [7, 2, 3]),
    ]
    want, selected = flexmatch_by_hand(steps, 8, 3, 0.8, warmup)
    for (probs, index), expected in zip(steps, want, strict=True):
        batch = Batch(u_index=torch.tensor(index), pool_size=8)
        mask, targets = method.flex_mask(probs, batch)
        assert mask.tolist() == expected
        assert targets.tolist() == probs.argmax(1).tolist()
    assert method.selected.tolist() == selected
    assert any(0 < m < 1 for m in [sum(x) / 3 for x in want])  # the thresholds did differ


def test_freematchs_threshold_and_fairness_term_as_the_reference():
    cfg, dataset = digits("freematch.momentum=0.9")
    method, _ = built(cfg, dataset, "freematch")
    rng = np.random.default_rng(0)
    tau, p_model, hist = 1 / 3, np.full(3, 1 / 3), np.full(3, 1 / 3)
    for _ in range(4):
        logits = rng.normal(0, 2, (6, 3))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        top, top_class = probs.max(1), probs.argmax(1)
        tau = 0.9 * tau + 0.1 * top.mean()
        p_model = 0.9 * p_model + 0.1 * probs.mean(0)
        counts = np.bincount(top_class, minlength=3)
        hist = 0.9 * hist + 0.1 * counts / counts.sum()
        want = (top >= tau * (p_model / p_model.max())[top_class]).astype(float)
        mask, targets = method.adaptive_mask(torch.tensor(probs, dtype=torch.float32))
        np.testing.assert_allclose(method.tau.item(), tau, rtol=1e-5)
        np.testing.assert_allclose(method.p_model.numpy(), p_model, rtol=1e-5)
        np.testing.assert_allclose(method.label_hist.numpy(), hist, rtol=1e-5)
        assert mask.tolist() == want.tolist() and targets.tolist() == top_class.tolist()
    # the fairness term: SumNorm(p / h) against SumNorm(mean prob of the kept / their hist)
    strong = rng.normal(0, 1, (6, 3))
    kept = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    s = np.exp(strong[kept == 1]) / np.exp(strong[kept == 1]).sum(1, keepdims=True)
    h = np.bincount(s.argmax(1), minlength=3) / len(s)
    target = p_model / hist / (p_model / hist).sum()
    with np.errstate(divide="ignore"):
        inv = np.where(h > 0, 1 / np.where(h > 0, h, 1), 0)
    mean = s.mean(0) * inv / (s.mean(0) * inv).sum()
    want = (target * np.log(mean + 1e-12)).sum()
    got = fairness_term(
        torch.tensor(kept),
        torch.tensor(strong),
        method.p_model.double(),
        method.label_hist.double(),
    )
    np.testing.assert_allclose(got.item(), want, rtol=1e-6)


def test_softmatchs_weights_are_the_truncated_gaussian_of_the_aligned_probabilities():
    cfg, dataset = digits("softmatch.momentum=0.8", "softmatch.n_sigma=2")
    method, _ = built(cfg, dataset, "softmatch")
    rng = np.random.default_rng(1)
    p_model, mu, var = None, 1 / 4, 1.0
    for _ in range(3):
        weak = rng.normal(0, 2, (8, 4))
        probs = np.exp(weak) / np.exp(weak).sum(1, keepdims=True)
        mean = probs.mean(0)
        p_model = mean if p_model is None else 0.8 * p_model + 0.2 * mean
        aligned = probs * (0.25 + 1e-6) / (p_model + 1e-6)
        aligned /= aligned.sum(1, keepdims=True)
        top = aligned.max(1)
        mu = 0.8 * mu + 0.2 * top.mean()
        var = 0.8 * var + 0.2 * top.var(ddof=1)
        want = np.exp(-(np.minimum(top - mu, 0) ** 2) / (2 * var / 4))
        got = method.soft_weights(torch.tensor(weak, dtype=torch.float32), torch.zeros(2, 4))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    assert (got <= 1).all() and (got > 0).all()


@pytest.mark.parametrize("tsa", ["none", "linear", "exp"])
def test_udas_sharpened_targets_mask_and_annealing_as_the_paper(tsa):
    settings = ["uda.temperature=0.5", f"uda.tsa={tsa}"]
    cfg, dataset = digits(*settings)
    method, model = built(cfg, dataset, "uda")
    for module in model.modules():  # no dropout: the hand's pass sees what the method's saw
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = real_batch(cfg, dataset, method.unlabeled_views, labeled=16, unlabeled=24)
    with torch.no_grad():  # a threshold between the 12th and 13th: the mask keeps half
        weak = method.three_logits(model, batch)[1]
    top = torch.softmax(weak.double(), 1).max(1).values.sort().values
    half = float((top[11] + top[12]) / 2)
    cfg, _ = digits(*settings, f"uda.threshold={half}")
    method = get_method("uda")(cfg)
    terms = method.loss(model, TRAIN, batch)
    model.zero_grad()
    with torch.no_grad():  # the same pass by hand (batch norm: the same batch statistics)
        labeled, weak, strong = (t.double().numpy() for t in method.three_logits(model, batch))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = batch.progress
    alpha = {"none": None, "linear": p, "exp": math.exp((p - 1) * 5)}[tsa]
    eta = 1.0 if alpha is None else alpha * 0.9 + 0.1
    y = batch.y.numpy()
    ce = -np.log(softmax(labeled)[np.arange(len(y)), y])
    kept = softmax(labeled).max(1) <= eta
    mask = softmax(weak).max(1) >= half
    target = softmax(weak / 0.5)
    consistency = -(target * np.log(softmax(strong))).sum(1)
    np.testing.assert_allclose(terms["cls"].item(), (ce * kept).mean(), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(
        terms["consistency"].item(), (consistency * mask).mean(), rtol=2e-4, atol=1e-6
    )
    assert 0 < mask.mean() < 1


def test_adamatchs_relative_threshold_on_aligned_probabilities():
    cfg, dataset = digits("adamatch.momentum=0.5", "adamatch.threshold=0.9")
    method, _ = built(cfg, dataset, "adamatch")
    rng = np.random.default_rng(2)
    p_model, p_target = None, np.full(3, 1 / 3)
    for _ in range(3):
        weak, labeled = rng.normal(0, 2, (6, 3)), rng.normal(0, 2, (4, 3))
        pw = np.exp(weak) / np.exp(weak).sum(1, keepdims=True)
        pl = np.exp(labeled) / np.exp(labeled).sum(1, keepdims=True)
        p_model = pw.mean(0) if p_model is None else 0.5 * p_model + 0.5 * pw.mean(0)
        p_target = 0.5 * p_target + 0.5 * pl.mean(0)
        aligned = pw * (p_target + 1e-6) / (p_model + 1e-6)
        aligned /= aligned.sum(1, keepdims=True)
        cutoff = 0.9 * pl.max(1).mean()
        mask, targets = method.relative_mask(
            torch.tensor(weak, dtype=torch.float32), torch.tensor(labeled, dtype=torch.float32)
        )
        assert mask.tolist() == (aligned.max(1) >= cutoff).astype(float).tolist()
        assert targets.tolist() == aligned.argmax(1).tolist()


def test_defixmatch_subtracts_the_same_cost_on_the_labeled_images():
    cfg, dataset = digits("defixmatch.weight=0.5")
    method, model = built(cfg, dataset, "defixmatch")
    for module in model.modules():  # no dropout: the hand's pass sees what the method's saw
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = real_batch(cfg, dataset, method.unlabeled_views, labeled=16, unlabeled=24)
    with_labeled_views(batch, method, cfg, dataset)
    assert method.labeled_extra_views == ("strong",)
    with torch.no_grad():
        scores = model.encoder(torch.cat([batch.x, batch.x_views[0], *batch.u])).double()
    x, xs, w, s = (t.numpy() for t in scores.split([16, 16, 24, 24]))
    top = np.sort(np.exp(x).max(1) / np.exp(x).sum(1))
    tau = float((top[7] + top[8]) / 2)  # half of the labeled images pass: both masks matter
    method = get_method("defixmatch")(
        digits("defixmatch.weight=0.5", f"defixmatch.threshold={tau}")[0]
    )
    terms = method.loss(model, TRAIN, batch)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    y = batch.y.numpy()
    cls = 0.5 * (-log_softmax(x)[range(16), y].mean() - log_softmax(xs)[range(16), y].mean())
    pw, px = np.exp(log_softmax(w)), np.exp(log_softmax(x))
    mask, mask_x = pw.max(1) >= tau, px.max(1) >= tau
    pseudo = (-log_softmax(s)[range(24), pw.argmax(1)] * mask).mean()
    debias = (-log_softmax(xs)[range(16), px.argmax(1)] * mask_x).mean()
    np.testing.assert_allclose(terms["cls"].item(), cls, rtol=2e-4)
    np.testing.assert_allclose(terms["pseudo"].item(), 0.5 * pseudo, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(terms["debias"].item(), -0.5 * debias, rtol=2e-4, atol=1e-7)
    assert mask_x.sum() == 8


def test_dash_warms_up_on_labels_then_keeps_the_views_under_its_falling_loss_threshold():
    cfg, dataset = digits(
        "dash.warmup_steps=3", "dash.period_steps=2", "dash.gamma=2", "dash.rho_min=0.3"
    )
    method, model = built(cfg, dataset, "dash")
    batch = real_batch(cfg, dataset, method.unlabeled_views, labeled=16, unlabeled=24)
    rho_hat = None
    for step in range(3):  # the warm-up: the labeled cost alone, ρ̂ its EMA (0.9)
        batch.step = step
        terms = method.loss(model, TRAIN, batch)
        assert set(terms) == {"cls"}
        seen = terms["cls"].item()
        rho_hat = seen if rho_hat is None else 0.9 * rho_hat + 0.1 * seen
        np.testing.assert_allclose(method.rho_hat.item(), rho_hat, rtol=1e-6)
    rng = np.random.default_rng(3)
    weak = rng.normal(0, 2, (12, 5))
    for after in range(8):
        rho = max(1.0001 * 2.0 ** -(after // 2) * rho_hat, 0.3)
        if rho == 0.3:
            target = np.eye(5)[weak.argmax(1)]
        else:
            target = np.exp(weak / 0.5) / np.exp(weak / 0.5).sum(1, keepdims=True)
        log_p = weak - weak.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        own = -(target * log_p).sum(1)
        mask, targets = method.dynamic_mask(torch.tensor(weak, dtype=torch.float32), after)
        assert mask.tolist() == (own <= rho).astype(float).tolist(), after
        np.testing.assert_allclose(targets.numpy(), target, rtol=1e-5, atol=1e-6)
    batch.step = 3
    assert set(method.loss(model, TRAIN, batch)) == {"cls", "pseudo"}


def test_alignment_to_the_labeled_distribution_moves_its_target():
    align = DistributionAlignment(2, momentum=0.5, target="labeled")
    unlabeled = probs_batch([[0.9, 0.1], [0.7, 0.3]])
    labeled = probs_batch([[0.2, 0.8], [0.4, 0.6]])
    aligned = align(unlabeled, labeled)
    np.testing.assert_allclose(align.p_target.numpy(), [0.4, 0.6], rtol=1e-6)
    ratio = (np.array([0.4, 0.6]) + 1e-6) / (np.array([0.8, 0.2]) + 1e-6)
    want = unlabeled.numpy() * ratio
    np.testing.assert_allclose(aligned.numpy(), want / want.sum(1, keepdims=True), rtol=1e-5)


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("name", STATEFUL)
def test_the_running_state_restored_continues_bit_for_bit(name):
    """A method rebuilt from the state after step 1 computes what the one that went on
    computes, on the same later batches (what a resumed run relies on)."""
    cfg, dataset = digits(*SHORT_MU)
    first, model = built(cfg, dataset, name)
    batches = []
    for step in range(3):
        batch = real_batch(cfg, dataset, first.unlabeled_views, unlabeled=32)
        batch.u = [u.roll(step, dims=0) for u in batch.u]
        batch.u_index, batch.pool_size = torch.arange(32).roll(step) + 3 * step, 40
        batches.append(batch)
    model.eval()  # batch norm's running statistics stay put between the two methods' passes
    with torch.no_grad():
        first.loss(model, TRAIN, batches[0])
        second, _ = built(cfg, dataset, name)
        second.load_state_dict(first.state_dict())
        for step, batch in enumerate(batches[1:]):
            torch.manual_seed(step)  # the same MixUp and rotations (ReMixMatch) for both
            a = first.loss(model, TRAIN, batch)
            torch.manual_seed(step)
            b = second.loss(model, TRAIN, batch)
            assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    for x, y in zip(_tensors(first.state_dict()), _tensors(second.state_dict()), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("flexmatch.threshold=1.5", "flexmatch.threshold must be in (0, 1), got 1.5"),
        ("freematch.momentum=0", "freematch.momentum must be in (0, 1), got 0"),
        ("freematch.fairness=-1", "freematch.fairness must be a finite number >= 0"),
        ("softmatch.n_sigma=-2", "softmatch.n_sigma must be a finite number > 0, got -2"),
        ("softmatch.mu=0", "softmatch.mu must be a positive integer, got 0"),
        ("uda.temperature=-1", "uda.temperature must be a finite number > 0, got -1"),
        ("uda.tsa=cosine", "unknown uda.tsa 'cosine'"),
        ("adamatch.threshold=0", "adamatch.threshold must be in (0, 1), got 0"),
        ("defixmatch.threshold=1", "defixmatch.threshold must be in (0, 1), got 1"),
        ("dash.gamma=0.5", "dash.gamma must be >= 1"),
        ("dash.period_steps=0", "dash.period_steps must be a positive integer, got 0"),
        ("remixmatch.strong_views=0", "remixmatch.strong_views must be a positive integer"),
        ("remixmatch.temperature=-0.5", "remixmatch.temperature must be in (0, 1]"),
        ("crmatch.head_width=0", "crmatch.head_width must be a positive integer, got 0"),
        ("simmatch.alignment_length=0", "simmatch.alignment_length must be a positive integer"),
        ("simmatch.temperature=-1", "simmatch.temperature must be a finite number > 0, got -1"),
        ("simmatch.bank_momentum=1", "simmatch.bank_momentum must be in [0, 1), got 1"),
        ("comatch.queue_steps=0", "comatch.queue_steps must be a positive integer, got 0"),
        ("comatch.contrast_threshold=1.5", "comatch.contrast_threshold must be in (0, 1]"),
    ],
)
def test_an_out_of_range_setting_is_a_one_line_usage_error(override, message):
    with pytest.raises(UsageError) as error:
        digits(override)
    assert message in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------ through the CLI

# three epochs: the kill test needs a checkpoint of epoch 2 before the run ends
ARGS = [*SHORT, *SHORT_MU, "schedule.train.epochs=3"]


@pytest.fixture(scope="module")
def adaptive_runs(tmp_path_factory):
    results = tmp_path_factory.mktemp("adaptive")
    done = run_cli(f"methods=[{','.join(ADAPTIVE)}]", *ARGS, f"results={results}")
    assert done.returncode == 0, done.stderr
    return results


def test_they_train_through_the_cli(adaptive_runs):
    assert set(_records(adaptive_runs)) == set(ADAPTIVE)


def test_simmatch_killed_mid_run_resumes_to_the_same_result(adaptive_runs, tmp_path):
    """The most state of any: its bank (and the seed it was drawn from), its alignment
    queue, its projection head; every stateful method's state alone is checked above."""
    results = tmp_path / "killed"
    args = ["methods=[simmatch]", *ARGS, f"results={results}"]
    caught = kill_when(
        args,
        f"{results}/digits/*/checkpoint.pt",
        lambda state: state["epoch"] >= 2 and state["method"],
    )
    assert caught, "the run never reached its third epoch"
    run = _records(results)["simmatch"]
    assert not (run / "metrics.json").exists(), "killed too late to test a resume"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(_records(adaptive_runs)["simmatch"], run)


def test_every_ssl_method_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    """The classic six and these, one array job on the test cluster (one submission, so
    the cluster's fixed cost is paid once)."""
    everyone = (*SSL_METHODS, *ADAPTIVE)
    # that they run is the point (their terms and CLI runs are tested above): 1 epoch of
    # 4 steps, 2 past Dash's warm-up
    shorter = "schedule.train.epochs=1 dash.warmup_steps=2".split()
    args = [f"methods=[{','.join(everyone)}]", *ARGS, *shorter]
    slurm = ["launcher=slurm", "wait=true", "slurm.poll_s=0.5"]
    done = run_cli(*args, *slurm, f"results={tmp_path}", timeout=600)
    assert done.returncode == 0, done.stderr
    assert set(_records(tmp_path)) == set(everyone)
    assert all((folder / "metrics.json").is_file() for folder in _records(tmp_path).values())


def test_remixmatchs_guess_is_the_aligned_sharpened_weak_prediction_and_its_terms_ramp():
    """USB's DistAlignEMAHook ("gt" target) and sharpening, by hand: p · (p_target +
    1e-6) / (p_model + 1e-6), renormalized, then p^(1/T) renormalized, with p_model the
    first batch's mean, then an EMA; p_target the labels' class distribution. The
    rotation turns the images as numpy's rot90 does; the unlabeled terms ramp from 0."""
    from methods.remixmatch import rotate_quarters

    cfg, dataset = digits(*SHORT_MU)
    method, model = built(cfg, dataset, "remixmatch")
    rng = np.random.default_rng(0)
    labels = torch.tensor([0, 0, 1, 2])
    p_model = None
    for _ in range(2):
        logits = torch.from_numpy(rng.normal(size=(5, 3))).float()
        guess = method.guess(logits, labels)
        probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
        mean = probs.mean(0)
        p_model = mean if p_model is None else p_model * 0.999 + mean * 0.001
        p_target = np.array([2, 1, 1]) / 4
        aligned = probs * (p_target + 1e-6) / (p_model + 1e-6)
        aligned /= aligned.sum(1, keepdims=True)
        sharp = aligned**2  # T = 0.5
        np.testing.assert_allclose(guess.numpy(), sharp / sharp.sum(1, keepdims=True), rtol=1e-5)
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    turned = rotate_quarters(images, torch.tensor([1, 3]))
    np.testing.assert_array_equal(turned[0, 0], np.rot90(images[0, 0].numpy(), 1))
    np.testing.assert_array_equal(turned[1, 0], np.rot90(images[1, 0].numpy(), 3))
    method, model = built(cfg, dataset, "remixmatch")  # ten classes again
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    batch.step, batch.total_steps = 0, 1000  # progress 0: the ramp at its start
    terms = method.loss(model, TRAIN, batch)
    assert terms["mixed"].item() == terms["pre_mixup"].item() == 0.0
    assert terms["rotation"].item() > 0 and terms["cls"].item() > 0


def test_crmatchs_feature_and_rotation_terms_as_usb_computes_them():
    """USB's feature term, ``cosine_embedding_loss(ds_strong, ds_weak, target=-1)``
    masked by FixMatch's confident pseudo-labels and averaged over the pool batch, and
    the rotation head's cross-entropy on the first B weak views turned 0-3 quarters."""
    from methods._common import map_and_top
    from methods.remixmatch import rotate_quarters

    cfg, dataset = digits(*SHORT_MU, "crmatch.threshold=0.1")  # a mask with ones in it
    method, model = built(cfg, dataset, "crmatch")
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    model.eval()  # no dropout: the hand computation sees the same network
    terms = method.loss(model, TRAIN, batch)
    weak, strong = batch.u
    n = len(batch.x)
    turns = torch.tensor([0] * n + [1] * n + [2] * n + [3] * n)
    rotated = rotate_quarters(weak[:n].repeat(4, 1, 1, 1), turns)
    network = model.encoder
    feature_map, top = map_and_top(network, torch.cat([batch.x, weak, strong, rotated]))
    weak_logits = network.classify(top[n : n + 64])
    confidence, _ = torch.softmax(weak_logits, 1).max(1)
    mask = (confidence >= 0.1).float()
    assert 0 < mask.mean() <= 1
    ds = model.heads.ds(feature_map[n : n + 128].flatten(1))
    usb = F.cosine_embedding_loss(ds[64:], ds[:64], -torch.ones(64), reduction="none")
    torch.testing.assert_close(terms["features"], (usb * mask).mean())
    rotation = model.heads.rotation(top[n + 128 :].flatten(1))
    torch.testing.assert_close(terms["rotation"], F.cross_entropy(rotation, turns))


def _usb_alignment(probs: torch.Tensor, queue: torch.Tensor, pointer: int) -> torch.Tensor:
    """USB's DistAlignQueueHook with a uniform target, on a copy of its queue."""
    queue = queue.clone()
    queue[pointer] = probs.mean(dim=0)
    uniform = torch.ones(probs.shape[1]) / probs.shape[1]
    aligned = probs * (uniform + 1e-6) / (queue.mean(dim=0) + 1e-6)
    return aligned / aligned.sum(dim=-1, keepdim=True)


def test_simmatchs_terms_and_bank_as_usb_computes_them():
    """USB's SimMatch.train_step (use_cat, no EMA teacher: the bank moves with
    ema_bank 0.7), transcribed: label propagation, the instance term, the mask on the
    smoothed probabilities, and the labeled slots' update, on the second step (the
    first has written the bank)."""
    cfg, dataset = digits(*SHORT_MU, "simmatch.threshold=0.25")  # a mask with ones in it
    method, model = built(cfg, dataset, "simmatch")
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    fitted(model.encoder, batch)  # confident enough for some of the mask to be ones
    model.eval()  # no dropout: the hand computation sees the same network
    with torch.no_grad():
        method.loss(model, TRAIN, batch)
    bank = method.bank.features.t().clone()  # USB's mem_bank is (proj_size, K)
    labels_bank = method.bank.payload.clone()
    queue, pointer = method.alignment.p_model.clone(), method.alignment.pointer
    batch.x_index = torch.arange(len(batch.x)).flip(0)  # other slots than step 1's
    terms = method.loss(model, TRAIN, batch)

    network, weak, strong = model.encoder, *batch.u
    n, m, T, alpha = len(batch.x), 64, 0.1, 0.9
    top = network.features(torch.cat([batch.x, weak, strong]))
    logits, feats = network.classify(top), model.projection(top)
    feats_lb, feats_w, feats_s = feats[:n], feats[n : n + m], feats[n + m :]
    ema_probs = _usb_alignment(torch.softmax(logits[n : n + m], -1), queue, pointer)
    teacher_orig = F.softmax(feats_w @ bank / T, dim=1)
    factor = ema_probs.gather(1, labels_bank.expand([m, -1]))
    teacher = teacher_orig * factor
    teacher /= teacher.sum(dim=1, keepdim=True)
    aggregated = torch.zeros(m, 10).scatter_add(1, labels_bank.expand([m, -1]), teacher_orig)
    probs_w = ema_probs * alpha + aggregated * (1 - alpha)
    student = F.softmax(feats_s @ bank / T, dim=1)
    in_loss = torch.sum(-teacher * torch.log(student), dim=1).mean()
    mask = (probs_w.max(dim=1).values >= 0.25).float()
    assert 0 < mask.mean() < 1
    ce = -(probs_w * F.log_softmax(logits[n + m :], dim=1)).sum(dim=1)
    torch.testing.assert_close(terms["pseudo"], (ce * mask).mean())
    torch.testing.assert_close(terms["instance"], in_loss)
    expected = bank.clone()
    index = batch.x_index
    expected[:, index] = F.normalize(0.7 * bank[:, index] + 0.3 * feats_lb.t(), dim=0)
    torch.testing.assert_close(method.bank.features.t(), expected)
    assert torch.equal(method.bank.payload[index], batch.y)


def test_simmatch_warms_up_without_the_instance_term_or_the_propagation():
    cfg, dataset = digits(*SHORT_MU)
    method, model = built(cfg, dataset, "simmatch")
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    batch.step = 0  # the stage's first step: inside USB's first epoch
    terms = method.loss(model, TRAIN, batch)
    assert terms["instance"].item() == 0.0 and terms["instance"].requires_grad


def test_comatchs_terms_and_queue_as_usb_computes_them():
    """USB's CoMatch.train_step (use_cat, soft labels), transcribed, once the queue is
    full (``it > queue_batch``): the memory-smoothed pseudo-labels, their mask, the
    pseudo-label graph and the contrastive term between the two strong views, and the
    queue's next rows (the weak views' aligned probabilities and one-hot labels)."""
    cfg, dataset = digits(*SHORT_MU, "comatch.threshold=0.25", "comatch.queue_steps=1")
    method, model = built(cfg, dataset, "comatch")
    assert method.unlabeled_views == ("weak", "strong", "strong")
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
    fitted(model.encoder, batch)
    model.eval()
    with torch.no_grad():
        for _ in range(2):  # fills the queue: USB's `self.it > self.queue_batch` is next
            method.loss(model, TRAIN, batch)
    queue_feats, queue_probs = method.bank.features.clone(), method.bank.payload.clone()
    queue_ptr = method.bank.pointer
    queue, pointer = method.alignment.p_model.clone(), method.alignment.pointer
    batch.u = [view.roll(5, dims=0) for view in batch.u]  # other images than the queue's
    terms = method.loss(model, TRAIN, batch)

    network, (weak, first, second) = model.encoder, batch.u
    n, m, T, alpha = len(batch.x), 64, 0.2, 0.9
    top = network.features(torch.cat([batch.x, weak, first, second]))
    logits, feats = network.classify(top), model.projection(top)
    feats_lb, feats_w = feats[:n], feats[n : n + m]
    feats_s0, feats_s1 = feats[n + m : n + 2 * m], feats[n + 2 * m :]
    probs = _usb_alignment(torch.softmax(logits[n : n + m], -1), queue, pointer)
    probs_orig = probs.clone()
    A = torch.exp(torch.mm(feats_w, queue_feats.t()) / T)
    A = A / A.sum(1, keepdim=True)
    probs = alpha * probs + (1 - alpha) * torch.mm(A, queue_probs)
    mask = (probs.max(dim=1).values >= 0.25).float()
    assert 0 < mask.mean() < 1
    ce = -(probs * F.log_softmax(logits[n + m : n + 2 * m], dim=1)).sum(dim=1)
    torch.testing.assert_close(terms["pseudo"], (ce * mask).mean())
    Q = torch.mm(probs, probs.t())
    Q.fill_diagonal_(1)
    Q = Q * (Q >= 0.8).float()
    Q = Q / Q.sum(1, keepdim=True)
    sim = torch.exp(torch.mm(feats_s0, feats_s1.t()) / T)
    sim_probs = sim / sim.sum(1, keepdim=True)
    contrast = (-(torch.log(sim_probs + 1e-7) * Q).sum(1)).mean()
    torch.testing.assert_close(terms["contrast"], contrast)
    rows = torch.cat([feats_w, feats_lb])
    written = torch.cat([probs_orig, F.one_hot(batch.y, 10).float()])
    end = queue_ptr + len(rows)
    assert end <= len(method.bank)
    torch.testing.assert_close(method.bank.features[queue_ptr:end], rows.detach())
    torch.testing.assert_close(method.bank.payload[queue_ptr:end], written)
    assert method.bank.pointer == end % len(method.bank)


def test_a_memory_bank_queue_wraps_as_usbs_and_slots_move_with_momentum():
    from harness.memory_bank import MemoryBank

    bank = MemoryBank(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long))
    bank.push(torch.ones(3, 2), torch.ones(3, dtype=torch.long))
    bank.push(2 * torch.ones(3, 2), 2 * torch.ones(3, dtype=torch.long))  # cut at row 5
    assert bank.payload.tolist() == [1, 1, 1, 2, 2] and bank.pointer == 0
    bank.push(3 * torch.ones(1, 2), 3 * torch.ones(1, dtype=torch.long))
    assert bank.payload.tolist() == [3, 1, 1, 2, 2] and bank.pointer == 1
    slots = MemoryBank(F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1), torch.zeros(2))
    slots.write(torch.tensor([1]), torch.tensor([[1.0, 0.0]]), torch.tensor([4.0]), 0.7)
    torch.testing.assert_close(slots.features[1], F.normalize(torch.tensor([0.3, 0.7]), dim=0))
    assert slots.payload.tolist() == [0.0, 4.0]
