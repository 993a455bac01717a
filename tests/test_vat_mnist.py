"""VAT at its own MNIST setting (issue 33 §2): the ``vat_mlp`` model, the exponential
learning-rate schedule, batch-norm statistics recomputed at the end
(``eval.bn_recompute``) and the ``mnist_vat`` suite, dry and through the CLI."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import load_config
from harness.config.identity import run_relevant
from harness.data import center_crop, load_dataset, normalize
from harness.engine.batchnorm import average_statistics
from harness.engine.loop import make_scheduler
from harness.errors import UsageError
from harness.method import Batch, Stage, get_method
from harness.models import build_encoder
from harness.run import main as run_main
from methods.vat_mlp import GaussianNoise
from tests.conftest import run_cli
from tests.test_ladder import needs_mnist

TRAIN = Stage("train", unlabeled=True)


def test_vat_mlp_has_the_tpami_widths_and_noise_in_training_mode_only():
    torch.manual_seed(0)
    model = build_encoder("vat_mlp", 1, 10, 28)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 1200),
        (1200, 600),
        (600, 300),
        (300, 150),
        (150, 10),
    ]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [1200, 600, 300, 150, 10]  # the class layer too
    assert all(m.affine and m.eps == 1e-6 and m.momentum == pytest.approx(0.1) for m in norms)
    noises = [m for m in model.modules() if isinstance(m, GaussianNoise)]
    assert [m.std for m in noises] == [0.5] * 4  # each hidden layer, not the class scores
    assert isinstance(model.classifier[-1], nn.BatchNorm1d)
    assert all(torch.all(m.bias == 0) for m in linears)
    assert linears[0].weight.std().item() == pytest.approx(1 / 28, rel=0.02)  # N(0, 1/fan_in)
    x = torch.randn(64, 1, 28, 28)
    model.train()
    state = torch.get_rng_state()
    first = model(x)
    torch.set_rng_state(state)
    again = model(x)
    assert first.shape == (64, 10)
    assert torch.equal(first, again)  # the noise is the global generator's: replayable
    assert not torch.allclose(model(x), first)  # other draws, other scores
    model.eval()
    assert torch.equal(model(x), model(x))
    without_noise = model.classifier[:3](model.features(x))
    assert torch.equal(model.classifier[:4](model.features(x)), without_noise)
    noise = GaussianNoise(0.5).train()
    assert noise(torch.zeros(100_000)).std().item() == pytest.approx(0.5, rel=0.02)


def _rates(cfg, per_epoch: int, steps: int) -> list[float]:
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(cfg, optimizer, per_epoch * 100, per_epoch)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_exponential_schedule_multiplies_the_rate_at_each_epoch_boundary():
    cfg = load_config(["optim.lr_schedule=exponential", "optim.lr_decay=0.9"])
    assert _rates(cfg, 3, 9) == pytest.approx([1, 1, 1, 0.9, 0.9, 0.9, 0.81, 0.81, 0.81])
    suite = load_config(["suite=mnist_vat"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = make_scheduler(suite, optimizer, 50_000, 500).lr_lambdas[0]
    assert factor(499) == 1.0 and factor(500) == pytest.approx(0.9)  # after 500 steps
    assert factor(49_999) == pytest.approx(0.9**99)  # the 100th epoch
    with pytest.raises(ValueError, match="steps per epoch"):
        make_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 10)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.9"])
def test_a_decay_outside_0_1_is_one_line_exit_2(value, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["suite=mnist_vat", f"optim.lr_decay={value}", f"results={results}"]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optim.lr_decay must lie in (0, 1]" in err, err
    assert not results.exists()


def test_the_new_keys_leave_earlier_run_ids_alone_and_enter_them_when_set():
    plain = run_relevant(load_config([]), ["pretrain", "finetune"])
    assert "lr_decay" not in plain["optim"] and "bn_recompute" not in plain["eval"]
    both = load_config(["optim.lr_decay=0.5", "eval.bn_recompute=true", "report.last_k=1"])
    changed = run_relevant(both, ["pretrain", "finetune"])
    assert changed["optim"]["lr_decay"] == 0.5 and changed["eval"]["bn_recompute"] is True


def test_a_recompute_needs_the_final_models_error_alone():
    """The recomputed statistics serve the final model only: a median over the last
    evaluations would mix in models evaluated on the running statistics."""
    with pytest.raises(UsageError) as error:
        load_config(["eval.bn_recompute=true"])  # report.last_k: 3, the default
    assert str(error.value) == (
        "eval.bn_recompute=true needs report.last_k=1 (the final model's error), got "
        "report.last_k=3"
    )


def test_recomputed_statistics_are_the_exact_average_of_the_batches():
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Linear(5, 4),
        nn.BatchNorm1d(4, momentum=0.1),
        nn.ReLU(),
        nn.Linear(4, 3),
        nn.BatchNorm1d(3),
    )
    for norm in (network[1], network[4]):  # affine parameters that are not the identity
        nn.init.uniform_(norm.weight, 0.5, 2.0)
        nn.init.uniform_(norm.bias, -1.0, 1.0)
    network.eval()
    batches = [torch.randn(7, 5) * (i + 1) + i for i in range(3)]
    average_statistics(network, batches)
    first, second = network[1], network[4]
    with torch.no_grad():  # by hand: each batch normalized by its own statistics
        pre1 = [network[0](x) for x in batches]
        hidden = [
            F.relu(
                (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + first.eps) * first.weight
                + first.bias
            )
            for z in pre1
        ]
        pre2 = [network[3](h) for h in hidden]
    for module, pre in ((first, pre1), (second, pre2)):
        torch.testing.assert_close(
            module.running_mean, torch.stack([z.mean(0) for z in pre]).mean(0)
        )
        torch.testing.assert_close(module.running_var, torch.stack([z.var(0) for z in pre]).mean(0))
    assert first.momentum == 0.1 and not network.training  # both as they were


def test_vat_on_the_noisy_batch_normalized_mlp_shares_its_noise_and_backpropagates():
    """With ε near 0 the cost is near 0 only if the clean and perturbed passes draw the
    same noise; and the unlabeled passes, which leave the running statistics alone,
    must not break the labeled pass's backward (they once copied the statistics back
    in place, which autograd refuses)."""
    cfg = load_config(["model.name=vat_mlp", "data.resize=16", "data.crop=16", "vat.epsilon=1e-6"])
    dataset = load_dataset(cfg.data)
    torch.manual_seed(0)
    method = get_method("vat")(cfg)
    model = method.build_model(build_encoder("vat_mlp", 1, 10, 16), dataset)
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    images = normalize(center_crop(dataset.train.images[:96], 16), mean, std)
    y = torch.from_numpy(dataset.train.targets[:32])
    batch = Batch(x=images[:32], y=y, u=[images[32:]])
    model.train()
    with torch.no_grad():
        first, second = (torch.log_softmax(model(batch.u[0]), 1) for _ in range(2))
    apart = F.kl_div(second, first, log_target=True, reduction="batchmean")
    assert float(apart) > 1e-3  # the noise is on: separate draws move the output
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    terms = method.loss(model, TRAIN, batch)
    assert abs(float(terms["vat"].detach())) < 1e-6
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    after = dict(model.named_buffers())
    model.load_state_dict(reference)
    torch.manual_seed(1)
    model(batch.x)  # the labeled pass alone moves the statistics
    assert all(torch.equal(after[k], b) for k, b in model.named_buffers())


def test_the_suite_plans_three_seeds_of_vat_and_its_baseline_with_its_sources():
    cfg = load_config(["suite=mnist_vat"])
    assert list(cfg.methods) == ["baseline", "vat"] and list(cfg.seeds) == [0, 1, 2]
    assert cfg.vat.epsilon == pytest.approx(5.0 / 0.3081, rel=0.01)  # [0, 1] pixels -> ours
    assert cfg.eval.bn_recompute and cfg.report.last_k == 1
    assert [(p.method, p.labels, p.mean) for p in cfg.published] == [
        ("vat", "100", 1.36),
        ("vat", "1000", 1.27),
    ]
    result = run_cli("suite=mnist_vat", "dry_run=true")
    assert result.returncode == 0, result.stderr
    assert "6 runs planned" in result.stdout
    runs = [line.split("|")[2].strip() for line in result.stdout.splitlines()
            if re.match(r"\| [0-9a-f]{12} \|", line)]  # fmt: skip
    assert runs == ["baseline"] * 3 + ["vat"] * 3


@needs_mnist
def test_a_short_mnist_vat_run_goes_through_to_its_report(tmp_path):
    short = ["schedule.train.epochs=1", "schedule.train.steps=3"]
    short += ["schedule.pretrain.epochs=1", "schedule.pretrain.steps=3"]
    argv = ["suite=mnist_vat", "seeds=[0]", *short, "progress=false", "report.plots=false"]
    result = run_cli(*argv, f"results={tmp_path}", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "| vat |" in result.stdout and "1.36" in result.stdout
    for config in tmp_path.glob("mnist_vat/*/config.yaml"):
        folder = config.parent
        metrics = json.loads((folder / "metrics.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        last = history.iloc[-1]
        # the last evaluation is the final model's: statistics recomputed before both
        assert last["top1_val"] == pytest.approx(metrics["top1_val"])
        assert metrics["unlabeled"] == 59_900 and metrics["top1_val"] < 90
        assert last["images_labeled"] == 300
        assert last["images_unlabeled"] in (0, 750)
        assert math.isclose(last["lr"], 0.002)
        # the statistics are the average over the recompute's batches: 60,000 images in
        # 240 batches of 250 for VAT, the 100 labeled ones in one batch for the baseline
        stage = "train" if (folder / "stage-train.pt").is_file() else "pretrain"
        weights = torch.load(folder / f"stage-{stage}.pt", weights_only=True)
        tracked = {int(v) for k, v in weights.items() if k.endswith("num_batches_tracked")}
        assert tracked == ({240} if stage == "train" else {1})
    assert (tmp_path / "mnist_vat" / "report" / "published.md").is_file()
