"""The classic semi-supervised family (methods/pseudo_label.py, pi_model.py,
mean_teacher.py, vat.py, mixmatch.py, fixmatch.py), the engine hooks they use (views,
progress, EMA, evaluation model, precision, per-method settings) and their backbones,
on real digits and MNIST images: loss terms, the properties each paper states, the
strong augmentation against PIL, resumes after SIGKILL, and real CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageOps

from harness.config import config_for, load_config
from harness.data import augment_batch, center_crop, load_dataset, normalize, rand_augment
from harness.data import randaugment as ra
from harness.ema import EMA, WithEMA, trained_parameters
from harness.errors import UsageError
from harness.method import Batch, Stage, get_method
from harness.models import build_encoder
from harness.plan import make_plan
from harness.run import main as run_main
from harness.seeding import torch_generator
from methods._common import sharpen
from methods.fixmatch import confident_targets
from methods.mean_teacher import teacher_decay
from methods.mixmatch import mix
from methods.vat import adversarial_direction
from tests.conftest import assert_same_run, kill_when, run_cli, tree

SSL_METHODS = ("pseudo_label", "pi_model", "mean_teacher", "vat", "mixmatch", "fixmatch")
# a few real steps per run on the digits suite: seconds, the real models on real images
SHORT = [
    "schedule.train.epochs=4",
    "schedule.train.steps=4",
    "schedule.train.eval_every=1",
    "fixmatch.mu=2",
    "progress=false",
    "seeds=[0]",
    "labels=[100]",
    "threads=1",
    "report.plots=false",
]
TRAIN = Stage("train", unlabeled=True)


def digits(*overrides: str):
    cfg = load_config(list(overrides))
    return cfg, load_dataset(cfg.data)


def real_batch(cfg, dataset, views: tuple[str, ...], labeled: int = 32, unlabeled: int = 48):
    """Real digits: ``labeled`` center crops with labels, and the next ``unlabeled``
    images in each of ``views`` (weak: crop + flip, strong: then RandAugment)."""
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    images = dataset.train.images
    x = normalize(center_crop(images[:labeled], cfg.data.crop), mean, std)
    y = torch.from_numpy(dataset.train.targets[:labeled])
    generator = torch.Generator().manual_seed(0)
    pool = images[labeled : labeled + unlabeled]
    u = []
    for view in views:
        crops = augment_batch(pool, cfg.data.crop, cfg.data.hflip, generator)
        if view == "strong":
            crops = rand_augment(crops, generator)
        u.append(normalize(crops, mean, std))
    batch = Batch(x=x, y=y, u=u, step=5, total_steps=10)
    batch.x_index, batch.labeled_size = torch.arange(labeled), labeled
    return batch


def fitted(model: torch.nn.Module, batch: Batch, steps: int = 30) -> torch.nn.Module:
    """``model`` after ``steps`` Adam steps on the batch's labeled images: an untrained
    network's softmax is nearly uniform whatever its input, which leaves nothing for
    VAT's smoothness cost to measure (its KL is at rounding level, either sign)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch.x), batch.y).backward()
        optimizer.step()
    optimizer.zero_grad()
    return model


def built(cfg, dataset, name: str):
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    method = get_method(name)(cfg)
    return method, method.build_model(encoder, dataset)


# ------------------------------------------------------------------ loss terms

EXPECTED_TERMS = {
    "pseudo_label": {"cls", "pseudo"},
    "pi_model": {"cls", "consistency"},
    "mean_teacher": {"cls", "consistency"},
    "vat": {"cls", "vat"},
    "mixmatch": {"cls", "consistency"},
    "fixmatch": {"cls", "pseudo"},
}


@pytest.mark.parametrize("name", SSL_METHODS)
def test_each_methods_loss_terms_are_finite_positive_and_train(name):
    # thresholds low enough that an untrained network's guesses count
    cfg, dataset = digits("pseudo_label.threshold=0.05", "fixmatch.threshold=0.05")
    method, model = built(cfg, dataset, name)
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    if name == "vat":
        fitted(model, batch)
    terms = method.loss(model, TRAIN, batch)
    assert set(terms) == EXPECTED_TERMS[name]
    for key, value in terms.items():
        assert value.dim() == 0 and math.isfinite(value.item()), key
        assert value.item() > 0, f"{name}: term {key} is {value.item()} at mid-training"
    sum(terms.values()).backward()
    trained = list(method.parameters(model, TRAIN))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    if isinstance(model, WithEMA):  # the EMA copy is never given to the optimizer
        copies = {id(p) for p in model.ema.parameters()}
        assert not copies & {id(p) for p in trained}
        assert all(p.grad is None for p in model.ema.parameters())
    logged = method.pop_scalars()
    assert all(torch.isfinite(v) for v in logged.values())


def test_ramps_start_near_zero_and_reach_the_weight():
    cfg, dataset = digits()
    method, model = built(cfg, dataset, "pi_model")
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    weights = []
    for step in (0, 2, 4, 9):
        batch.step = step
        method.loss(model, TRAIN, batch)
        weights.append(float(method.pop_scalars()["weight"]))
    w_max, ramp = cfg.pi_model.weight, cfg.pi_model.ramp
    assert weights[0] == pytest.approx(w_max * math.exp(-5.0))  # exp(-5 (1 - 0)^2)
    assert weights[1] == pytest.approx(w_max * math.exp(-5.0 * (1 - 0.2 / ramp) ** 2))
    assert weights[2] == weights[3] == w_max  # from 40 % of the stage on


# ------------------------------------------------------------- Mean Teacher, EMA


def test_the_teacher_is_the_ema_of_the_student_by_the_formula_after_k_steps():
    cfg, dataset = digits("mean_teacher.ema_decay=0.9")
    method, model = built(cfg, dataset, "mean_teacher")
    assert isinstance(model, WithEMA)
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    optimizer = torch.optim.SGD(list(method.parameters(model, TRAIN)), lr=0.05)
    expected = [p.detach().double().clone() for p in model.encoder.parameters()]
    for step in range(6):
        batch.step = step
        optimizer.zero_grad()
        sum(method.loss(model, TRAIN, batch).values()).backward()
        optimizer.step()
        method.after_step(model, TRAIN, batch)
        alpha = min(1 - 1 / (step + 1), 0.9)  # the paper's ramp of α
        assert teacher_decay(step, 0.9) == alpha
        expected = [
            alpha * e + (1 - alpha) * p.detach().double()
            for e, p in zip(expected, model.encoder.parameters(), strict=True)
        ]
    for ema, want in zip(model.ema.module.parameters(), expected, strict=True):
        torch.testing.assert_close(ema.double(), want, rtol=1e-5, atol=1e-6)
    # ... and it is not the student (the student moved on without it)
    student = torch.cat([p.flatten() for p in model.encoder.parameters()])
    teacher = torch.cat([p.flatten() for p in model.ema.module.parameters()])
    assert not torch.allclose(student, teacher)
    assert method.eval_model(model) is model.ema.module
    assert method.also_evaluate(model) == {"student": model.encoder}


def test_ema_copies_buffers_and_refuses_a_decay_outside_0_1():
    cfg, dataset = digits()
    network = build_encoder("wrn_28_2", 1, 10, 12)
    ema = EMA(network)
    with torch.no_grad():
        network.features[0].weight.add_(1.0)
        network(torch.randn(4, 1, 12, 12))  # moves the batch-norm statistics
    ema.update(network, 0.5)
    for own, theirs in zip(ema.module.buffers(), network.buffers(), strict=True):
        assert torch.equal(own, theirs)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ema.update(network, 1.0)
    holder = WithEMA(network)
    assert len(list(trained_parameters(holder))) == len(list(network.parameters()))


# ---------------------------------------------------------------------- FixMatch


def test_fixmatchs_mask_counts_only_confident_weak_predictions():
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 1.0, 0.0]])
    targets, mask = confident_targets(scores, threshold=0.95)
    probs = torch.softmax(scores, 1).max(1).values
    assert mask.tolist() == [float(p >= 0.95) for p in probs]
    assert mask.tolist() == [0.0, 0.0, 1.0, 0.0] and targets[2] == 2
    # through the method: the logged mask rate is the fraction of confident weak views,
    # and the pseudo term is the strong views' cross-entropy on those alone
    cfg, dataset = digits()
    method, model = built(cfg, dataset, "fixmatch")
    model.eval()  # no dropout: the same scores in and out of the method
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    with torch.no_grad():
        weak = model.encoder(batch.u[0])
        strong = model.encoder(batch.u[1])
    confidence = torch.softmax(weak, 1).max(1).values
    threshold = confidence.median().item()  # half the batch is confident
    cfg, dataset = digits(f"fixmatch.threshold={threshold}")
    method = get_method("fixmatch")(cfg)
    terms = method.loss(model, TRAIN, batch)
    confident = confidence >= threshold
    assert 0 < confident.sum() < len(confident), "pick a threshold that splits the batch"
    assert float(method.pop_scalars()["mask"]) == pytest.approx(confident.float().mean().item())
    per_image = torch.nn.functional.cross_entropy(strong, weak.argmax(1), reduction="none")
    want = (per_image * confident).sum() / len(confident)
    assert terms["pseudo"].item() == pytest.approx(want.item(), rel=1e-4)
    assert method.unlabeled_batch_size() == cfg.fixmatch.mu * cfg.optim.batch_size


# ---------------------------------------------------------------------- MixMatch


def test_mixmatch_sharpens_and_mixes_towards_each_images_own():
    probs = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    sharp = sharpen(probs, 0.5)
    assert torch.allclose(sharp[0], torch.tensor([0.36, 0.16]) / 0.52)
    assert torch.allclose(sharp.sum(1), torch.ones(3))
    assert torch.equal(sharp[1], probs[1]) and torch.allclose(sharpen(probs, 1.0), probs)
    assert (sharp.max(1).values >= probs.max(1).values).all()
    torch.manual_seed(0)
    images = torch.arange(8.0).view(8, 1, 1, 1)
    targets = torch.eye(8)
    mixed, mixed_targets = mix(images, targets, alpha=0.75)
    own = mixed_targets.diagonal()
    assert (own >= 0.5).all()  # λ' = max(λ, 1 - λ)
    assert torch.allclose(mixed_targets.sum(1), torch.ones(8))
    # an image and its target are mixed with the same λ and partner
    assert torch.allclose(mixed.view(8), mixed_targets @ torch.arange(8.0))


# --------------------------------------------------------------------------- VAT


def test_vats_perturbation_has_norm_epsilon_and_is_computed_in_fp32_under_bf16():
    cfg, dataset = digits("vat.epsilon=1.5")
    method, model = built(cfg, dataset, "vat")
    model.eval()
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    u = batch.u[0]
    with torch.no_grad():
        p_log = torch.log_softmax(model(u), 1)
    direction = adversarial_direction(model, u, p_log, xi=1e-6, iterations=1)
    assert direction.dtype == torch.float32
    norms = direction.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the trainer does on CUDA
        terms = method.loss(model, TRAIN, batch)
    assert terms["vat"].dtype == torch.float32  # the perturbed pass left autocast
    assert float(method.pop_scalars()["r_norm"]) == pytest.approx(1.5, rel=1e-5)
    # the power iteration finds a direction that moves the output more than chance;
    # in float64, where the gradient at ξ = 1e-6 of an untrained (nearly flat) network
    # is not at fp32's rounding level (there it depends on the CPU's instruction set)
    model, u = model.double(), u.double()
    with torch.no_grad():
        p_log = torch.log_softmax(model(u), 1)
    torch.manual_seed(1)
    direction = adversarial_direction(model, u, p_log, xi=1e-6, iterations=1)

    def moved(d: torch.Tensor) -> float:
        with torch.no_grad():
            scores = torch.log_softmax(model(u + 1.5 * d), 1)
        kl = torch.nn.functional.kl_div(scores, p_log, log_target=True, reduction="batchmean")
        return float(kl)

    noise = torch.randn_like(u)
    assert moved(direction) > 2 * moved(noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1))


def test_vats_passes_of_an_image_share_dropout_masks():
    """With ε near 0 the cost KL(p(u) ‖ p(u + r)) is near 0 only if the clean and
    perturbed passes drop the same units; two plain passes in train mode differ."""
    cfg, dataset = digits("vat.epsilon=1e-6")
    method, model = built(cfg, dataset, "vat")
    model.train()
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    fitted(model, batch)
    u = batch.u[0]
    with torch.no_grad():
        first, second = torch.log_softmax(model(u), 1), torch.log_softmax(model(u), 1)
    apart = torch.nn.functional.kl_div(second, first, log_target=True, reduction="batchmean")
    assert float(apart) > 1e-3  # dropout is on: separate masks move the output
    terms = method.loss(model, TRAIN, batch)
    # near 0 either side: a float32 KL of two equal distributions rounds to about ±1e-8
    assert abs(float(terms["vat"].detach())) < 1e-6


# -------------------------------------------------------------- the strong view


def mnist_like_images() -> torch.Tensor:
    """Real digits at 16 px, grayscale uint8, as [B, 1, H, W]."""
    cfg, dataset = digits()
    return dataset.train.images[:24]


def test_operations_match_pil_on_real_images():
    images = mnist_like_images()
    unit = images.float() / 255.0
    none = torch.zeros(len(images))
    checks = {
        "equalize": (ra._equalize(unit, none), ImageOps.equalize),
        "autocontrast": (ra._autocontrast(unit, none), ImageOps.autocontrast),
        "posterize": (
            ra._posterize(unit, torch.full((len(images),), 5.0)),
            lambda im: ImageOps.posterize(im, 5),
        ),
        "solarize": (
            ra._solarize(unit, torch.full((len(images),), 128 / 255.0)),
            lambda im: ImageOps.solarize(im, 128),
        ),
    }
    for name, (ours, pil) in checks.items():
        for i in range(len(images)):
            want = np.asarray(pil(Image.fromarray(images[i, 0].numpy())))
            got = (ours[i, 0] * 255).round().to(torch.uint8).numpy()
            assert np.array_equal(got, want), f"{name} differs from PIL on image {i}"


def test_the_strong_view_differs_from_the_weak_one_and_repeats_from_its_seed():
    images = mnist_like_images()

    def views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch_generator("augment", seed, "train", 0)
        weak = augment_batch(images, 12, False, generator)
        strong = rand_augment(augment_batch(images, 12, False, generator), generator)
        return weak, strong

    weak, strong = views(0)
    assert strong.dtype == torch.uint8 and strong.shape == weak.shape
    assert (strong != weak).flatten(1).any(1).all(), "every image changed by the strong view"
    again_weak, again_strong = views(0)
    assert torch.equal(again_weak, weak) and torch.equal(again_strong, strong)
    assert not torch.equal(views(1)[1], strong)
    # every image has its Cutout square: a block of gray covering a quarter of the crop
    assert ((strong == 128).flatten(1).sum(1) >= 6 * 6 // 2).all()
    # under DDP a rank draws for the whole batch and keeps its rows
    generator = torch.Generator().manual_seed(3)
    full = rand_augment(weak, generator)
    generator = torch.Generator().manual_seed(3)
    shard = rand_augment(weak[1::2], generator, full=len(weak), rank=1, world=2)
    assert torch.equal(shard, full[1::2])


# ------------------------------------------------------------------- backbones


@pytest.mark.parametrize(("name", "params"), [("conv_large", 3_119_498), ("wrn_28_2", 1_467_322)])
def test_the_backbones_have_the_papers_size_and_train_with_every_ssl_method(name, params):
    network = build_encoder(name, 1, 10, 28)
    assert sum(p.numel() for p in network.parameters()) == params
    assert network(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    argv = [f"model.name={name}", "methods=[all]", "schedule.train.epochs=1"]
    plan = make_plan(load_config(argv))
    planned = {spec.method for spec in plan}
    assert set(SSL_METHODS) <= planned  # no switches needed: `all` takes them
    assert "swwae_all" not in planned  # which needs pooling switches


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["methods=[fixmatch]", "fixmatch.threshold=1.5"], "fixmatch.threshold must be in (0, 1)"),
        (["methods=[fixmatch]", "fixmatch.threshold=0"], "fixmatch.threshold must be in (0, 1)"),
        (["methods=[mean_teacher]", "mean_teacher.ema_decay=1.0"], "must be in [0, 1)"),
        (["methods=[fixmatch]", "fixmatch.ema_decay=-0.1"], "must be in [0, 1)"),
        (["methods=[fixmatch]", "fixmatch.mu=0"], "fixmatch.mu must be a positive integer"),
        (["methods=[fixmatch]", "fixmatch.mu=2.5"], "fixmatch.mu"),
        (["methods=[fixmatch]", "fixmatch.strong=heavy"], "unknown augmentation for fixmatch"),
        (["methods=[swwae_all]", "model.name=conv_large"], "needs a model with pooling switches"),
        (
            ["methods=[ladder]", "per_method.ladder.model.name=wrn_28_2"],
            "ladder trains only model.name=ladder_mlp",
        ),
        (["per_method.nope.model.name=mlp"], "unknown method in per_method 'nope'"),
        (["per_method.vat.seeds=[3]"], "per_method.vat.seeds: seeds is set for the whole suite"),
        (["per_method.vat.data.name=mnist"], "every method of a suite reads the same dataset"),
        (["per_method.vat.optim.batch_size=0"], "optim.batch_size must be a positive integer"),
    ],
)
def test_bad_ssl_input_is_one_line_exit_2_and_writes_nothing(argv, words, tmp_path, capsys):
    results = tmp_path / "results"
    code = run_main([*SHORT, *argv, f"results={results}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert not results.exists()


# ------------------------------------------------------------- per-method keys


def test_per_method_keys_reach_that_methods_runs_and_ids_only():
    plain = load_config(["methods=[baseline,vat]", "schedule.train.epochs=1"])
    own = load_config(
        [
            "methods=[baseline,vat]",
            "schedule.train.epochs=1",
            "per_method.vat.model.name=conv_large",
            "per_method.vat.schedule.train.steps=7",
        ]
    )
    assert config_for(own, "vat").model.name == "conv_large"
    assert config_for(own, "baseline").model.name == own.model.name == "vgg_small_2"
    ids = {
        cfg_name: {s.method: s.run_id for s in make_plan(cfg)}
        for cfg_name, cfg in (("plain", plain), ("own", own))
    }
    assert ids["plain"]["baseline"] == ids["own"]["baseline"]
    assert ids["plain"]["vat"] != ids["own"]["vat"]


# ------------------------------------------------------------------ real runs


def _records(results: Path) -> dict[str, Path]:
    """method -> its run folder (one run per method)."""
    return {
        yaml.safe_load(config.read_text())["run"]["method"]: config.parent
        for config in results.glob("digits/*/config.yaml")
    }


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


OWN_MODEL = "per_method.pi_model.model.name=mlp"  # one method on a model of its own


@pytest.fixture(scope="module")
def six_runs(tmp_path_factory) -> Path:
    """The six through the CLI in one process (the reference of the tests below)."""
    results = tmp_path_factory.mktemp("six")
    methods = f"methods=[{','.join(SSL_METHODS)}]"
    inprocess = run_cli(methods, *SHORT, OWN_MODEL, f"results={results}")
    assert inprocess.returncode == 0, inprocess.stderr
    return results


def test_the_six_train_through_the_cli_under_inprocess_and_local_parallel(six_runs, tmp_path):
    # the two with an EMA copy, under the other local launcher: the same numbers
    parallel = run_cli(
        "methods=[mean_teacher,fixmatch]",
        *SHORT,
        "launcher=local_parallel",
        "parallel=2",
        f"results={tmp_path / 'b'}",
    )
    assert parallel.returncode == 0, parallel.stderr
    first, second = _records(six_runs), _records(tmp_path / "b")
    assert set(first) == set(SSL_METHODS) and set(second) == {"mean_teacher", "fixmatch"}
    for name, folder in second.items():
        a, b = _metrics(first[name]), _metrics(folder)
        a.pop("seconds"), b.pop("seconds")
        assert a == b, f"{name}: the launchers disagree"
    models = {
        name: yaml.safe_load((folder / "config.yaml").read_text())["config"]["model"]["name"]
        for name, folder in first.items()
    }
    assert models == {name: "mlp" if name == "pi_model" else "vgg_small_2" for name in SSL_METHODS}
    for name in SSL_METHODS:
        history = pd.read_csv(first[name] / "history.csv")
        assert list(history["images_labeled"]) == [4 * 32] * 4
        pool = 4 * (2 * 32 if name == "fixmatch" else 64)  # FixMatch: mu x the labeled batch
        assert list(history["images_unlabeled"]) == [pool] * 4
    assert "student_top1_val" in _metrics(first["mean_teacher"])
    assert "raw_top1_val" in _metrics(first["fixmatch"])
    # the reported errors are the teacher's: its predictions, from the final checkpoint
    folder = first["mean_teacher"]
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    cfg, dataset = digits()
    method, model = built(cfg, dataset, "mean_teacher")
    model.load_state_dict(state["model"])
    teacher = method.eval_model(model).eval()
    val = dataset.val
    x = normalize(
        center_crop(val.images, cfg.data.crop),
        torch.tensor(dataset.mean),
        torch.tensor(dataset.std),
    )
    with torch.no_grad():
        top1 = teacher(x).argmax(1).numpy()
    stored = np.load(folder / "predictions.npz")["val_topk"][:, 0]
    assert np.array_equal(top1, stored)


# the six as SLURM jobs: tests/test_adaptive_ssl.py runs every SSL method in one array


@pytest.mark.parametrize("name", ["mean_teacher", "fixmatch"])
def test_sigkill_then_resume_is_bit_identical(name, six_runs, tmp_path):
    args = [f"methods=[{name}]", *SHORT, OWN_MODEL]  # the run ids of six_runs
    results = tmp_path / "killed"
    caught = kill_when(
        [*args, f"results={results}"],
        f"{results}/digits/*/checkpoint.pt",
        lambda state: state["stage_index"] == 0 and state["epoch"] >= 2,
    )
    assert caught, "the run never reached its third epoch"
    run = _records(results)[name]
    assert not (run / "metrics.json").exists(), "killed too late to test a resume"
    resumed = run_cli(*args, f"results={results}")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(_records(six_runs)[name], run)


def test_a_dry_run_of_an_ssl_suite_writes_nothing(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    before = tree(results)
    code = run_main(
        [f"methods=[{','.join(SSL_METHODS)}]", *SHORT, "dry_run=true", f"results={results}"]
    )
    assert code == 0 and tree(results) == before
    with pytest.raises(UsageError):
        load_config(["fixmatch.mu=-3"])


def test_vats_unlabeled_passes_leave_batch_norm_statistics_to_the_labeled_pass():
    cfg, dataset = digits("model.name=conv_large")
    method, model = built(cfg, dataset, "vat")
    batch = real_batch(cfg, dataset, method.unlabeled_views)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)  # conv_large's dropout: the same masks in both labeled passes
    method.loss(model, TRAIN, batch)
    after_loss = {k: v.clone() for k, v in model.named_buffers()}  # batch norms' only
    model.load_state_dict(reference)
    torch.manual_seed(0)
    model(batch.x)  # the labeled pass alone
    labeled_only = dict(model.named_buffers())
    assert after_loss and all(torch.equal(after_loss[k], labeled_only[k]) for k in after_loss)
    assert not all(torch.equal(after_loss[k], reference[k]) for k in after_loss)
