"""The FixMatch recipe's parts in the engine (issue 34 §2): Nesterov SGD, weight decay on
conv and linear weights only, the cos(7πk/16K) decay and an EMA warm-up. Each is a
setting any method can use; at its default a run's id and numbers are what they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.config import load_config
from harness.config.identity import run_relevant
from harness.data import reflect_pad
from harness.engine.loop import make_optimizer, make_scheduler
from harness.errors import UsageError
from harness.method import Stage
from harness.models import build_encoder
from methods._common import warmed_up_decay
from tests.test_ssl import built, digits, real_batch

TRAIN = Stage("train", unlabeled=True)
SGD = ["optim.name=sgd"]  # the default suite trains with Adam
RECIPE = [*SGD, "optim.nesterov=true", "optim.decay_on=weights", "optim.ema_warmup=true"]


def test_decay_reaches_conv_and_linear_weights_only():
    """One SGD step on a zero loss: a decayed parameter shrinks by lr x wd, the
    batch-norm scales and shifts and the biases stay where they were."""
    cfg = load_config([*SGD, "optim.decay_on=weights", "optim.weight_decay=0.1"])
    torch.manual_seed(0)
    network = build_encoder("wrn_28_2", 3, 10, 32)
    for module in network.modules():  # batch norm at its init (1, 0) would hide a decay
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 2.0)
            torch.nn.init.uniform_(module.bias, 0.5, 2.0)
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    optimizer = make_optimizer(cfg, network.parameters(), lr=0.5)
    (0.0 * sum(p.sum() for p in network.parameters())).backward()
    optimizer.step()
    decayed = kept = 0
    for name, param in network.named_parameters():
        if param.ndim > 1:  # conv kernels and the fc weight
            torch.testing.assert_close(param.detach(), before[name] * (1 - 0.5 * 0.1))
            decayed += 1
        else:
            torch.testing.assert_close(param.detach(), before[name], rtol=0, atol=0)
            kept += 1
    assert decayed == 29 and kept > 20  # 25 3x3 and 3 shortcut convolutions, the fc; BN, a bias
    plain = load_config([*SGD, "optim.weight_decay=0.1"])
    everything = make_optimizer(plain, network.parameters(), 0.5)
    assert len(everything.param_groups) == 1 and everything.param_groups[0]["weight_decay"] == 0.1


def test_nesterov_sgd_takes_the_lookahead_step():
    """Two steps of Nesterov momentum by hand: v = μv + g, θ -= lr (g + μv)."""
    cfg = load_config([*SGD, "optim.nesterov=true", "optim.weight_decay=0", "optim.momentum=0.9"])
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = make_optimizer(cfg, [param], lr=0.1)
    want, velocity = param.detach().clone(), torch.zeros(2)
    for _ in range(2):
        optimizer.zero_grad()
        (param**2).sum().backward()
        grad = 2 * want
        velocity = 0.9 * velocity + grad
        want = want - 0.1 * (grad + 0.9 * velocity)
        optimizer.step()
        torch.testing.assert_close(param.detach(), want)


def test_the_fixmatch_decay_is_cos_7_pi_k_over_16_k():
    cfg = load_config(["optim.lr_schedule=cosine_7_16"])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer(cfg, [param], lr=0.03)
    scheduler = make_scheduler(cfg, optimizer, total_steps=1000)
    rates = []
    for _ in range(1001):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.03)
    assert rates[500] == pytest.approx(0.03 * math.cos(7 * math.pi * 500 / 16000))
    assert rates[1000] == pytest.approx(0.03 * math.cos(7 * math.pi / 16))  # 0.195 of it


def test_the_ema_warm_up_forgets_the_random_start():
    """With the warm-up the EMA after step k is the formula's average; the decay is
    (1 + k) / (10 + k) until that reaches the method's own."""
    decays = [warmed_up_decay(k, 0.999) for k in (0, 8, 80, 20000)]
    assert decays == pytest.approx([0.1, 0.5, 0.9, 0.999])
    cfg, dataset = digits("optim.ema_warmup=true", "fixmatch.mu=1")
    method, model = built(cfg, dataset, "fixmatch")
    batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=32)
    optimizer = torch.optim.SGD(list(method.parameters(model, TRAIN)), lr=0.05)
    expected = [p.detach().double().clone() for p in model.encoder.parameters()]
    for step in range(3):
        batch.step = step
        optimizer.zero_grad()
        sum(method.loss(model, TRAIN, batch).values()).backward()
        optimizer.step()
        method.after_step(model, TRAIN, batch)
        decay = (1 + step) / (10 + step)
        expected = [
            decay * e + (1 - decay) * p.detach().double()
            for e, p in zip(expected, model.encoder.parameters(), strict=True)
        ]
    for ema, want in zip(model.ema.module.parameters(), expected, strict=True):
        torch.testing.assert_close(ema.double(), want, rtol=1e-5, atol=1e-6)


def test_the_recipe_enters_a_run_id_only_where_it_is_set():
    stages = ["pretrain", "finetune"]
    plain = run_relevant(load_config([]), stages)
    assert not {"nesterov", "decay_on", "ema_warmup"} & set(plain["optim"])
    recipe = run_relevant(load_config([*RECIPE, "optim.lr_schedule=cosine_7_16"]), stages)
    assert recipe["optim"]["nesterov"] is True and recipe["optim"]["decay_on"] == "weights"
    assert recipe["optim"]["ema_warmup"] is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.decay_on=bias"], "optim.decay_on"),
        (["optim.name=adam", "optim.nesterov=true"], "optim.nesterov=true needs optim.name=sgd"),
        (["optim.lr_schedule=cosine_7_17"], "cosine_7_16"),
    ],
)
def test_a_bad_recipe_setting_is_a_usage_error(overrides, message):
    with pytest.raises(UsageError) as error:
        load_config(overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_weak_views_pad_mirrors_the_border_as_numpy_does():
    """data.pad: training crops come from the image reflect-padded on each side
    (FixMatch's 4 px at 32: translations of up to 12.5%), numpy's ``reflect``."""
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    padded = reflect_pad(images, 4)
    want = np.pad(images.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    assert padded.dtype == torch.uint8 and np.array_equal(padded.numpy(), want)
    assert reflect_pad(images, 0) is images
    assert "pad" not in run_relevant(load_config([]), ["pretrain", "finetune"])["data"]
    assert run_relevant(load_config(["data.pad=4"]), ["pretrain", "finetune"])["data"]["pad"] == 4
    with pytest.raises(UsageError, match="data.pad must be >= 0, got -1"):
        load_config(["data.pad=-1"])


TEACHER_DROPOUT = (
    *("fixmatch", "flexmatch", "freematch", "softmatch", "dash", "adamatch", "uda"),
    *("defixmatch", "pseudo_label", "mean_teacher", "mixmatch", "simmatch", "comatch"),
)


@pytest.mark.parametrize("name", TEACHER_DROPOUT)
def test_teacher_dropout_off_makes_the_targets_without_dropout(name):
    """``<method>.teacher_dropout=false`` on a model with dropout (digits' VGG): the pass
    that makes the targets runs with every dropout layer off and no gradient, the
    trained passes keep dropout, and the terms still train the network; at the default
    every dropout layer is on in every pass (the one pass of the reference code), and the
    key enters a run id only where it is false."""
    from tests.test_adaptive_ssl import SHORT_MU, with_labeled_views

    seen: dict[bool, list[tuple[bool, int, bool]]] = {}
    for teacher_dropout in (True, False):
        cfg, dataset = digits(*SHORT_MU, f"{name}.teacher_dropout={teacher_dropout}")
        method, model = built(cfg, dataset, name)
        model.train()
        calls = seen.setdefault(teacher_dropout, [])
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.register_forward_hook(
                    lambda m, inputs, out, calls=calls: calls.append(
                        (m.training, len(inputs[0]), torch.is_grad_enabled())
                    )
                )
        batch = real_batch(cfg, dataset, method.unlabeled_views, unlabeled=64)
        batch.u_index, batch.pool_size = torch.arange(64), 100
        with_labeled_views(batch, method, cfg, dataset)
        terms = method.loss(model, Stage("train", unlabeled=True), batch)
        sum(terms.values()).backward()
        trained = list(method.parameters(model, Stage("train", unlabeled=True)))
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        in_id = cfg[name].teacher_dropout is False
        relevant = run_relevant(cfg, [], method.config_sections)
        assert ("teacher_dropout" in relevant[name]) == in_id
    assert seen[True] and all(training for training, _, _ in seen[True])
    off = [(size, grad) for training, size, grad in seen[False] if not training]
    assert off and all(size % 64 == 0 and not grad for size, grad in off)  # the pool views
    assert any(training and grad for training, _, grad in seen[False])
