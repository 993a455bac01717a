"""MNIST and the Ladder networks (methods/ladder): the dataset, the combinator, the
costs' weights, the clean and corrupted passes, the population statistics, and real
runs through the CLI under every launcher, on small real MNIST subsets."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.config import load_config
from harness.data import center_crop, load_dataset, normalize
from harness.data.datasets import MNIST_DEFAULT, mnist_folder
from harness.engine.loop import make_scheduler
from harness.errors import UsageError
from harness.method import Batch, get_method
from harness.models import build_encoder
from harness.run import main as run_main
from methods.ladder.method import Combinator, LadderDecoder, denoising_costs
from methods.ladder.model import LadderEncoder
from tests.conftest import run_cli

MNIST = Path(MNIST_DEFAULT).expanduser()
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# skipped where MNIST was not fetched, except under CI, which fetches it and must run these
needs_mnist = pytest.mark.skipif(
    not all((MNIST / name).is_file() for name in FILES) and not os.environ.get("CI"),
    reason="MNIST is not in ~/.cache/harness/mnist (bash tools/fetch_mnist.sh; .ci/run does)",
)
pytestmark = needs_mnist
SUITE = "suite=mnist_ladder"
# a few real steps per run: seconds, still the real model on real MNIST
SHORT = [
    SUITE,
    "labels=[100]",
    "seeds=[0]",
    "schedule.train.epochs=2",
    "schedule.train.steps=15",
    "schedule.train.eval_every=1",
    "progress=false",
    "report.plots=false",
]


def ladder_cfg(*overrides: str):
    return load_config([SUITE, *overrides])


def real_batch(cfg, labeled: int = 100, unlabeled: int = 100) -> Batch:
    """Normalized real MNIST images: ``labeled`` with labels, then ``unlabeled``."""
    dataset = load_dataset(cfg.data)
    images = dataset.train.images[: labeled + unlabeled]
    x = normalize(
        center_crop(images, cfg.data.crop), torch.tensor(dataset.mean), torch.tensor(dataset.std)
    )
    y = torch.from_numpy(dataset.train.targets[:labeled])
    return Batch(x=x[:labeled], y=y, u=[x[labeled:]])


def built(cfg, method_name: str):
    dataset = load_dataset(cfg.data)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, 1, 10, cfg.data.crop)
    method = get_method(method_name)(cfg)
    return method, method.build_model(encoder, dataset)


# ------------------------------------------------------------------------ MNIST


def test_mnist_reads_its_idx_files_and_torchvisions_layout(tmp_path):
    dataset = load_dataset(OmegaConf.create({"name": "mnist", "path": None, "resize": 28}))
    assert (len(dataset.train), len(dataset.val), dataset.channels) == (60000, 10000, 1)
    assert dataset.train.images.shape == (60000, 1, 28, 28)
    assert sorted(set(dataset.train.targets.tolist())) == list(range(10))
    raw = tmp_path / "MNIST" / "raw"  # torchvision's root/MNIST/raw, gzipped as it keeps them
    raw.mkdir(parents=True)
    for name in FILES:
        with open(MNIST / name, "rb") as source, gzip.open(raw / f"{name}.gz", "wb", 1) as out:
            shutil.copyfileobj(source, out)
    assert mnist_folder(str(tmp_path)) == raw
    again = load_dataset(OmegaConf.create({"name": "mnist", "path": str(tmp_path), "resize": 28}))
    assert torch.equal(again.train.images, dataset.train.images)
    assert again.fingerprint == dataset.fingerprint  # moved data keeps its runs


def test_missing_or_damaged_mnist_files_are_one_line_naming_the_file(tmp_path):
    for name in FILES[1:]:
        (tmp_path / name).symlink_to(MNIST / name)
    with pytest.raises(UsageError, match=r"no train-images-idx3-ubyte\(\.gz\); fetch the four"):
        load_dataset(OmegaConf.create({"name": "mnist", "path": str(tmp_path), "resize": 28}))
    (tmp_path / FILES[0]).write_bytes((MNIST / FILES[0]).read_bytes()[:1000])
    with pytest.raises(UsageError, match="train-images-idx3-ubyte' is truncated or corrupt"):
        load_dataset(OmegaConf.create({"name": "mnist", "path": str(tmp_path), "resize": 29}))
    (tmp_path / FILES[0]).unlink()
    (tmp_path / FILES[0]).symlink_to(MNIST / FILES[2])  # the test set in the train files
    (tmp_path / FILES[1]).unlink()
    (tmp_path / FILES[1]).symlink_to(MNIST / FILES[3])
    with pytest.raises(UsageError, match="hold 10000 images, not MNIST's 60000"):
        load_dataset(OmegaConf.create({"name": "mnist", "path": str(tmp_path), "resize": 30}))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["data.path=/no/such/folder"], "does not exist (dataset mnist)"),
        (["methods=[ladder]", "model.name=mlp"], "ladder trains only model.name=ladder_mlp"),
        (["labels=[105]"], "cannot be split evenly over 10 classes"),
        (["ladder.weights=[1,2]"], "ladder.weights has 2 values; model ladder_mlp has 7"),
        (["ladder_gamma.weight=-1"], "ladder_gamma.weight must be a finite number >= 0"),
    ],
)
def test_bad_ladder_input_is_one_line_exit_2_and_writes_nothing(argv, words, tmp_path, capsys):
    results = tmp_path / "results"
    assert run_main([*SHORT, *argv, f"results={results}"]) == 2  # in process: no torch import
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not results.exists()


# ------------------------------------------------------------------------ the model


def test_the_combinator_has_ten_parameters_per_unit_and_the_papers_form():
    g = Combinator(3)
    assert g.a.shape == (10, 3)
    z, u = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(g(z, u), torch.zeros(4, 3))  # a2 = a7 = 1, the rest 0: ẑ = 0 at first
    with torch.no_grad():
        g.a.copy_(torch.arange(30, dtype=torch.float32).reshape(10, 3) / 10)
    a = g.a.detach()
    mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
    v = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
    assert torch.allclose(g(z, u), (z - mu) * v + mu)


def test_clean_and_corrupted_passes_and_the_population_statistics():
    cfg = ladder_cfg()
    _, encoder = built(cfg, "ladder_supervised")
    assert isinstance(encoder, LadderEncoder)
    assert encoder.widths == (784, 1000, 500, 250, 250, 250, 10)
    batch = real_batch(cfg, 100, 0)
    dataset = load_dataset(cfg.data)
    pixels = dataset.train.images[:100].flatten(1).float() / 255
    assert torch.allclose(encoder.features(batch.x), pixels, atol=1e-5)  # pixel units
    encoder.train()
    before = encoder.classifier[0].running_mean.clone()
    clean = encoder.encode(batch.x)
    assert torch.equal(encoder.classifier[0].running_mean, before)  # no `track`: untouched
    for z in clean.z[1:]:  # batch-normalized: zero mean, unit variance per unit
        assert z.mean(0).abs().max() < 1e-4 and (z.var(0, unbiased=False) - 1).abs().max() < 1e-3
    torch.manual_seed(1)
    corrupted = encoder.encode(batch.x, input_noise=0.3, noise=0.3)
    assert (corrupted.z[0] - clean.z[0]).std().item() == pytest.approx(0.3, rel=0.02)
    assert (corrupted.z[1] - clean.z[1]).std().item() > 0.3  # the input's noise, and its own
    layer_only = encoder.encode(batch.x, input_noise=0.0, noise=0.3)
    assert torch.equal(layer_only.z[0], clean.z[0])
    assert (layer_only.z[1] - clean.z[1]).std().item() == pytest.approx(0.3, rel=0.02)
    assert torch.equal(encoder.encode(batch.x, 0.0, 0.0).logits, clean.logits)  # no noise = clean
    encoder.encode(batch.x, track=True)
    layer = encoder.classifier[0]
    z_pre = layer.op(pixels)
    assert torch.allclose(layer.running_mean, 0.1 * z_pre.mean(0), atol=1e-5)
    assert torch.allclose(layer.running_var, 0.9 + 0.1 * z_pre.var(0, unbiased=True), atol=1e-4)
    # evaluation: population statistics, so an image's scores do not depend on its batch
    encoder.eval()
    alone = encoder(batch.x[:5])
    assert torch.allclose(alone, encoder(batch.x)[:5], atol=1e-5)
    h = pixels[:5]
    for layer in encoder.classifier:
        z = (layer.op(h) - layer.running_mean) / torch.sqrt(layer.running_var + 1e-10)
        h = layer.activate(z)
    assert torch.allclose(alone, h, atol=1e-4)


def test_each_method_has_its_costs_with_their_weights():
    cfg = ladder_cfg()
    batch = real_batch(cfg)
    terms = {}
    for name in ("ladder_supervised", "ladder_gamma", "ladder"):
        method, model = built(cfg, name)
        model.train()
        torch.manual_seed(2)
        terms[name] = method.loss(model, None, batch)
    assert set(terms["ladder_supervised"]) == {"cls"}
    assert set(terms["ladder_gamma"]) == {"cls", "denoise6"}
    assert set(terms["ladder"]) == {"cls", *(f"denoise{layer}" for layer in range(7))}
    # the same encoder, seed and batch: the labeled cost is the same in all three
    assert terms["ladder"]["cls"].item() == pytest.approx(terms["ladder_gamma"]["cls"].item())
    # weights scale their terms: 1000 at the input, 10, then 0.1 (the paper's 100-label ones)
    method, model = built(cfg, "ladder")
    torch.manual_seed(3)
    corrupted = model.encoder.encode(batch.u[0], 0.3, 0.3)
    clean = model.encoder.encode(batch.u[0])
    estimates = model.decoder(corrupted)
    unit = denoising_costs(estimates, clean, dict.fromkeys(range(7), 1.0))
    weighted = denoising_costs(estimates, clean, dict(enumerate(cfg.ladder.weights)))
    for layer, weight in enumerate([1000, 10, 0.1, 0.1, 0.1, 0.1, 0.1]):
        key = f"denoise{layer}"
        assert weighted[key].item() == pytest.approx(weight * unit[key].item(), rel=1e-6)
    # ẑ = 0 at the start: normalized by the clean batch's statistics it is -mean/std, so a
    # normalized layer's unit cost is 1 + mean((mean/std)^2); the input's is mean(x^2)
    shift = (clean.mean[3] / clean.std[3]).pow(2).mean().item()
    assert unit["denoise3"].item() == pytest.approx(1.0 + shift, rel=1e-3)
    assert unit["denoise0"].item() == pytest.approx((clean.z[0] ** 2).mean().item(), rel=1e-6)
    assert not denoising_costs(estimates, clean, {0: 0.0})  # a zero weight adds no term
    gamma = LadderDecoder(model.encoder.widths, lowest=6)
    assert len(gamma.combinators) == 1 and len(gamma.vertical) == 0


def test_linear_last_third_keeps_the_rate_then_decays_to_zero():
    cfg = ladder_cfg()
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(cfg, optimizer, 9)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3])


# ------------------------------------------------------------------------ real runs


def _records(results: Path) -> dict[str, tuple[dict, list[str]]]:
    found = {}
    for config in results.glob("mnist_ladder/*/config.yaml"):
        import yaml

        method = yaml.safe_load(config.read_text())["run"]["method"]
        metrics = json.loads((config.parent / "metrics.json").read_text())
        metrics.pop("seconds")
        found[method] = (metrics, (config.parent / "history.csv").read_text().splitlines())
    return found


def test_the_three_methods_train_through_the_cli_under_inprocess_and_local_parallel(tmp_path):
    methods = "methods=[ladder_supervised,ladder_gamma,ladder]"
    inprocess = run_cli(*SHORT, methods, f"results={tmp_path / 'a'}")
    assert inprocess.returncode == 0, inprocess.stderr
    for name in ("ladder_supervised", "ladder_gamma", "ladder"):
        assert f"| {name} |" in inprocess.stdout
    records = _records(tmp_path / "a")
    for name, (metrics, history) in records.items():
        assert (metrics["labeled"], metrics["unlabeled"]) == (100, 59900)
        assert metrics["top1_val"] < 60, (name, metrics)  # 30 real steps learn something
        header = history[0].split(",")
        row = dict(zip(header, history[-1].split(","), strict=True))
        assert row["images_labeled"] == "1500"  # 15 steps of 100
        assert row["images_unlabeled"] == ("0" if name == "ladder_supervised" else "1500")
    parallel = run_cli(
        *SHORT,
        "methods=[ladder_gamma,ladder]",
        "launcher=local_parallel",
        "parallel=2",
        f"results={tmp_path / 'b'}",
    )
    assert parallel.returncode == 0, parallel.stderr
    again = _records(tmp_path / "b")
    for name in ("ladder_gamma", "ladder"):
        assert again[name][0] == records[name][0]  # bit-identical under another launcher


def test_the_ladder_runs_as_a_slurm_job(slurm_cluster, tmp_path):
    slurm = ["launcher=slurm", "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.poll_s=0.5"]
    args = [*SHORT, "methods=[ladder]", "schedule.train.epochs=1", *slurm, "wait=true"]
    done = run_cli(*args, f"results={tmp_path}")
    assert done.returncode == 0, done.stderr
    ((metrics, history),) = _records(tmp_path).values()
    assert metrics["epochs"] == 1 and "denoise0" in history[0]


def test_conv_small_takes_the_gamma_model_and_the_supervised_baseline_not_the_full_ladder(
    tmp_path, capsys
):
    cfg = ladder_cfg("model.name=ladder_conv_small")
    batch = real_batch(cfg, 20, 20)
    method, model = built(cfg, "ladder_gamma")
    # run.py's convf/convv geometry on 28 px: 32, 16, 14, 16, 8, 6, 6, 1, then the scores
    assert model.encoder.widths == (1, 32, 32, 64, 64, 64, 128, 10, 10, 10)
    model.train()
    terms = method.loss(model, None, batch)
    assert set(terms) == {"cls", "denoise9"}
    sum(terms.values()).backward()
    assert model.encoder.classifier[0].op.weight.grad.abs().sum() > 0  # the cost reaches conv1
    clean = model.encoder.encode(batch.u[0])
    assert [tuple(z.shape[1:]) for z in clean.z[1:3]] == [(32, 32, 32), (32, 16, 16)]
    for z in clean.z[1:]:  # per channel over images and positions
        dims = (0,) if z.dim() == 2 else (0, 2, 3)
        assert z.mean(dims).abs().max() < 1e-4
    model.eval()
    assert torch.allclose(model.encoder(batch.x[:3]), model.encoder(batch.x)[:3], atol=1e-5)
    args = [*SHORT, "model.name=ladder_conv_small", f"results={tmp_path}"]
    assert run_main([*args, "methods=[ladder]"]) == 2
    assert "ladder trains only model.name=ladder_mlp; got model.name=ladder_conv_small" in (
        capsys.readouterr().err
    )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
