"""The decoding-pathway methods (methods/decoding.py): losses, stages, plan, real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.config import load_config
from harness.data import center_crop, load_dataset, normalize
from harness.engine.loop import set_trainable
from harness.method import Batch, get_method
from harness.models import build_encoder
from harness.plan import make_plan
from tests.conftest import assert_same_run, kill_when, run_cli

VARIANTS = ["sae_first", "sae_all", "sae_layerwise", "swwae_first", "swwae_all", "swwae_layerwise"]
# digits, 100 labels, one seed, every stage short: seconds per run, real data
SHORT = [
    "labels=[100]",
    "seeds=[0]",
    "threads=1",
    "progress=false",
    "schedule.pretrain.epochs=30",
    "schedule.pretrain.steps=0",  # one pass over the 100 labels (4 steps) per epoch
    "schedule.decoder_layerwise.epochs=5",
    "schedule.decoder_topdown.epochs=5",
    "schedule.finetune.epochs=4",
]


def records(results: Path) -> dict[str, Path]:
    """method -> run folder, for a results root holding one run per method."""
    found = {}
    for config in results.glob("digits/*/config.yaml"):
        import yaml

        found[yaml.safe_load(config.read_text())["run"]["method"]] = config.parent
    return found


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def real_batch(cfg, labeled: int, unlabeled: int, offset: int = 0) -> Batch:
    """Normalized center crops of real digits: ``labeled`` with labels, then ``unlabeled``."""
    dataset = load_dataset(cfg.data)
    images = dataset.train.images[offset : offset + labeled + unlabeled]
    x = normalize(
        center_crop(images, cfg.data.crop),
        torch.tensor(dataset.mean),
        torch.tensor(dataset.std),
    )
    y = torch.from_numpy(dataset.train.targets[offset : offset + labeled])
    return Batch(x=x[:labeled], y=y, u=[x[labeled:]])


def make_model(cfg, name: str):
    dataset = load_dataset(cfg.data)
    method = get_method(name)(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    return method, method.build_model(encoder, dataset)


def test_all_six_variants_are_registered_after_the_baseline():
    cfg = load_config(["methods=all", "labels=[100]", "seeds=[0]"])
    planned = [spec.method for spec in make_plan(cfg)]
    assert planned[0] == "baseline"
    assert [m for m in planned if m.startswith(("sae_", "swwae_"))] == VARIANTS


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_has_its_stages_and_loss_terms(name):
    cfg = load_config([])  # digits: two macro-layers, so loss sites image and pool1
    method, model = make_model(cfg, name)
    stages = {stage.name: stage for stage in method.stages()}
    placement = name.split("_")[1]
    expected_stages = ["pretrain", "decoder_layerwise", "decoder_topdown", "finetune"]
    if placement == "layerwise":
        expected_stages.remove("decoder_topdown")
    assert list(stages) == expected_stages
    assert stages["pretrain"].starts_from == "baseline" and stages["pretrain"].initializes
    both = {"recon_image", "recon_pool1"}
    expected_terms = {
        "decoder_layerwise": both,
        "decoder_topdown": {"recon_image"} if placement == "first" else both,
        "finetune": ({"recon_image"} if placement == "first" else both) | {"cls"},
    }
    batch = real_batch(cfg, 8, 16)
    for stage_name, terms in expected_terms.items():
        if stage_name not in stages:
            continue
        got = method.loss(model, stages[stage_name], batch)
        assert set(got) == terms, stage_name
        assert all(torch.isfinite(v) and v.ndim == 0 for v in got.values())
    mode, _ = method.pathway("finetune")
    assert mode == ("layerwise" if placement == "layerwise" else "topdown")


def test_reconstruction_uses_caffe_euclidean_normalization_and_the_reference_units():
    cfg = load_config(["decoding.weights=[0.5,0.25]"])
    method, model = make_model(cfg, "sae_all")
    stage = next(s for s in method.stages() if s.name == "decoder_topdown")
    batch = real_batch(cfg, 4, 6)
    terms = method.loss(model, stage, batch)
    images = torch.cat([batch.x, *batch.u])
    enc = model.encode(images)
    image_hat, pool1_hat = model.decoder.topdown(enc)
    dataset = load_dataset(cfg.data)
    target = images * torch.tensor(dataset.std).view(1, -1, 1, 1)  # (pixel - mean) / 255
    expected_image = 0.5 * ((image_hat - target) ** 2).sum() / (2 * len(images))
    expected_pool1 = 0.25 * ((pool1_hat - enc.pooled[0]) ** 2).sum() / (2 * len(images))
    torch.testing.assert_close(terms["recon_image"], expected_image)
    torch.testing.assert_close(terms["recon_pool1"], expected_pool1)


def test_gradients_reach_the_decoder_from_the_unlabeled_batch():
    cfg = load_config([])
    method, model = make_model(cfg, "swwae_all")
    stages = {stage.name: stage for stage in method.stages()}
    # decoder stage, unlabeled images only: the decoder learns from them
    set_trainable(model, method, stages["decoder_layerwise"])
    only_unlabeled = real_batch(cfg, 0, 16)
    sum(
        method.loss(model, stages["decoder_layerwise"], Batch(u=only_unlabeled.u)).values()
    ).backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.encoder.parameters())  # frozen: no gradient
    # joint fine-tune: changing only the unlabeled images changes the decoder's gradient
    set_trainable(model, method, stages["finetune"])

    def decoder_grad(batch: Batch) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks
        sum(method.loss(model, stages["finetune"], batch).values()).backward()
        return torch.cat([p.grad.flatten() for p in model.decoder.parameters()])

    a, b = real_batch(cfg, 8, 16), real_batch(cfg, 8, 16, offset=100)
    b.x, b.y = a.x, a.y  # same labeled images, other unlabeled ones
    assert not torch.allclose(decoder_grad(a), decoder_grad(b))


def test_plan_pulls_in_the_baseline_run_each_variant_starts_from():
    cfg = load_config(["methods=[swwae_all]", "labels=[100,500]", "seeds=[0,1]"])
    plan = make_plan(cfg)
    assert [s.method for s in plan].count("baseline") == 4
    for position, spec in enumerate(plan):
        for dependency in spec.depends_on:
            source = next(i for i, s in enumerate(plan) if s.run_id == dependency)
            assert source < position
            assert (plan[source].labels, plan[source].split_seed) == (spec.labels, spec.split_seed)
    family = f"methods=[baseline,{','.join(VARIANTS)}]"
    all_plan = make_plan(load_config([family, "labels=[100,500]", "seeds=[0,1]"]))
    baseline_ids = {s.run_id for s in all_plan if s.method == "baseline"}
    assert {s.run_id for s in plan if s.method == "baseline"} == baseline_ids
    # decoder settings re-run decoder runs only, never the baseline
    other = make_plan(
        load_config([family, "labels=[100,500]", "seeds=[0,1]", "decoding.weights=[0.1,0.001]"])
    )
    same = {s.run_id for s in other} & {s.run_id for s in all_plan}
    assert same == baseline_ids


def test_wrong_number_of_loss_weights_exits_2(tmp_path):
    result = run_cli("methods=[sae_all]", "decoding.weights=[0.01]", f"results={tmp_path}")
    assert result.returncode == 2
    assert "decoding.weights has 1 values but model 'vgg_small_2' has 2 loss sites" in result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def decoding_runs(tmp_path_factory) -> Path:
    """One real digits run each of the baseline, sae_all and swwae_all."""
    results = tmp_path_factory.mktemp("decoding") / "results"
    result = run_cli(*SHORT, "methods=[sae_all,swwae_all]", f"results={results}")
    assert result.returncode == 0, result.stderr
    errors, recon = result.stdout.split("relative reconstruction error")
    rows = [line.split("|") for line in errors.splitlines() if line.startswith("|")]
    assert [row[1].strip() for row in rows[2:]] == ["baseline", "sae_all", "swwae_all"], errors
    rows = [line.split("|") for line in recon.splitlines() if line.startswith("|")]
    assert [row[2].strip() for row in rows if row[1].strip() == "100"] == ["sae_all", "swwae_all"]
    return results


def test_encoder_is_frozen_in_decoder_stages_and_trained_in_the_finetune(decoding_runs):
    folders = records(decoding_runs)
    base = torch.load(folders["baseline"] / "stage-pretrain.pt")
    run = folders["swwae_all"]
    stage = {
        name: torch.load(run / f"stage-{name}.pt")
        for name in ("pretrain", "decoder_layerwise", "decoder_topdown", "finetune")
    }

    def part(state, prefix):
        return {k: v for k, v in state.items() if k.startswith(prefix)}

    encoder = {name: part(state, "encoder.") for name, state in stage.items()}
    decoder = {name: part(state, "decoder.") for name, state in stage.items()}
    for key, value in base.items():  # step 1 is the baseline's run, copied
        assert torch.equal(encoder["pretrain"][f"encoder.{key}"], value)
    for name in ("decoder_layerwise", "decoder_topdown"):
        for key, value in encoder["pretrain"].items():
            assert torch.equal(encoder[name][key], value), (name, key)
    assert any(not torch.equal(encoder["finetune"][k], v) for k, v in encoder["pretrain"].items())
    for before, after in (
        ("pretrain", "decoder_layerwise"),
        ("decoder_layerwise", "decoder_topdown"),
    ):
        assert all(
            not torch.equal(decoder[after][k], v)
            for k, v in decoder[before].items()
            if k.endswith("weight")
        )
    history = pd.read_csv(run / "history.csv")
    assert list(dict.fromkeys(history["stage"])) == [
        "decoder_layerwise",
        "decoder_topdown",
        "finetune",
    ]
    assert (history[history["stage"] == "finetune"]["loss_cls"] > 0).all()
    base_history = pd.read_csv(folders["baseline"] / "history.csv")
    assert (base_history["stage"] == "finetune").sum() == (history["stage"] == "finetune").sum()


def test_swwae_reconstructs_far_better_than_sae_on_real_digits(decoding_runs, tmp_path):
    """The paper's central observation: max-pooling is where the information goes.

    Both decoders as they stand after the frozen-encoder stages (same encoder,
    same training), scored on the real digits val set."""
    cfg = load_config(SHORT)
    dataset = load_dataset(cfg.data)
    val = normalize(
        center_crop(dataset.val.images, cfg.data.crop),
        torch.tensor(dataset.mean),
        torch.tensor(dataset.std),
    )
    errors = {}
    for name in ("sae_all", "swwae_all"):
        method, model = make_model(cfg, name)
        folder = records(decoding_runs)[name]
        model.load_state_dict(torch.load(folder / "stage-decoder_topdown.pt"))
        errors[name] = method.val_report(model, [val], tmp_path)
        assert (tmp_path / "samples.png").stat().st_size > 100
        assert (folder / "samples.png").stat().st_size > 100
    sae, swwae = errors["sae_all"], errors["swwae_all"]
    # from the top code (pool2 at 3x3): SWWAE's switches carry what pooling dropped
    assert swwae["recon_rel_topdown_image"] < 0.6 * sae["recon_rel_topdown_image"], errors
    # (from the clean pool1 code, 32x6x6 values for 12x12 pixels, both are about equal:
    # so overcomplete a code loses nothing to pooling)
    assert not (records(decoding_runs)["baseline"] / "samples.png").exists()


def test_a_pretrained_checkpoint_replaces_the_baseline_run(decoding_runs, tmp_path):
    """``model.pretrained`` = the baseline's stage-1 weights: no dependency, same numbers."""
    folders = records(decoding_runs)
    weights = folders["baseline"] / "stage-pretrain.pt"
    args = [*SHORT, "methods=[swwae_all]", f"model.pretrained={weights}"]
    plan = make_plan(load_config(args))
    assert [s.method for s in plan] == ["swwae_all"] and plan[0].depends_on == ()
    result = run_cli(*args, f"results={tmp_path}")
    assert result.returncode == 0, result.stderr
    got = metrics(records(tmp_path)["swwae_all"])
    ref = metrics(folders["swwae_all"])
    for key in ("top1_val", "top5_val", "dense_top1_val", "recon_rel_topdown_image"):
        assert got[key] == ref[key], key


def test_sigkill_in_the_joint_finetune_then_resume_equals_uninterrupted(decoding_runs, tmp_path):
    args = [*SHORT, "methods=[swwae_all]", f"results={tmp_path}"]
    # finetune is stage 3 (the baseline's checkpoint is globbed too)
    caught = kill_when(
        args,
        f"{tmp_path}/digits/*/checkpoint.pt",
        lambda s: s["stage_index"] == 3 and s["epoch"] >= 1,
    )
    assert caught, "the run never reached the fine-tune"
    run = records(tmp_path)["swwae_all"]
    assert not (run / "metrics.json").exists(), "killed too late to test a resume"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(records(decoding_runs)["swwae_all"], run)


def test_invert_draws_sae_beside_swwae_from_each_layer(decoding_runs):
    result = run_cli(
        "method=swwae_all",
        "images=4",
        "layer=3",  # pool1, pool2 and fc6 (through an fc decoder trained on the spot)
        "fc_steps=50",
        *SHORT,
        f"results={decoding_runs}",
        module="methods.decoding.invert",
    )
    assert result.returncode == 0, result.stderr
    (picture,) = (decoding_runs / "digits" / "invert").glob("swwae_all-*.png")
    from PIL import Image

    image = Image.open(picture)
    width, height = image.size
    assert width > height  # 4 rows of 7 tiles: original + 3 layers x (SAE, SWWAE)
    # labels drawn into the picture: a white band above the tiles and left of them,
    # with dark text in both (the header over the columns, the row labels)
    gray = np.asarray(image.convert("L"))
    assert (gray[:20] < 128).any() and (gray[30:, :20] < 128).any()
    table = pd.read_json(picture.with_suffix(".json"))
    assert sorted(table["method"].unique()) == ["sae_all", "swwae_all"]
    assert sorted(table["layer"].unique()) == [1, 2, 3]
    assert sorted(table["name"].unique()) == ["fc6", "pool1", "pool2"]
    for layer in (2, 3):  # from the top pool and from fc6 the switches carry the "where"
        error = table[table["layer"] == layer].set_index("method")["relative_error"]
        assert error["swwae_all"] < error["sae_all"]
    assert table["relative_error"].between(0, 2).all()
    assert "relative reconstruction error" in result.stdout and "swwae_all" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["method=baseline"], "unknown method to invert (a decoding pathway) 'baseline'"),
        (["method=swwae_all", "layer=6"], "layer=6, but model 'vgg_small_2' has layers 1..5"),
        (["method=swwae_all", "layer=x"], "layer='x' is not a valid int"),
        (["method=swwae_all", "images=0"], "images must be >= 1, got 0"),
        (["method=swwae_all", "model.name=mlp"], "needs a model with pooling switches"),
        (["method=sae_all", "model.name=mlp"], "needs a model with macro-layers"),
        (["layer=1"], "method= is required: one of sae_all, sae_first"),
        (["method=sae_first"], "is not done; first run: python -m harness.run"),
    ],
)
def test_invert_bad_input_exits_2(tmp_path, argv, message):
    result = run_cli(*argv, *SHORT, f"results={tmp_path}", module="methods.decoding.invert")
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_invert_help_lists_its_keys_and_the_suite_keys():
    result = run_cli("--help", module="methods.decoding.invert")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m methods.decoding.invert")
    for key in ("method=", "layer=", "images=8", "fc_steps=500", "val_images=0", "model.name="):
        assert key in result.stdout, key


def test_vgg16_defaults_are_the_reference_weights_and_every_variant_builds_on_vgg16():
    from harness.data import Dataset, ImageSet
    from methods.decoding.settings import DecodingSettings

    assert DecodingSettings().weights == [1e-4, 1e-12, 1e-12, 1e-12, 1e-10]
    cfg = load_config(["model.name=vgg16", "decoding.weights=[1e-4,1e-12,1e-12,1e-12,1e-10]"])
    empty = ImageSet(targets=np.zeros(0, dtype=np.int64))
    imagenet = Dataset(
        "imagenet",
        empty,
        empty,
        tuple(map(str, range(1000))),
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    encoder = build_encoder("vgg16", 3, 1000, 224)
    for name in VARIANTS:
        model = get_method(name)(cfg).build_model(encoder, imagenet)
        assert len(model.decoder.layers) == 5


def test_baseline_and_decoder_finetunes_take_the_same_number_of_labeled_steps():
    from harness.data import load_or_store_split
    from harness.engine.batches import stage_batches, steps_per_epoch
    from harness.engine.context import Context

    cfg = load_config(["labels=[100]", "seeds=[0]"])
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(Path("unused"), dataset, "100", 0, store=False)
    counts = {}
    for spec in make_plan(
        load_config(["methods=[baseline,swwae_all]", "labels=[100]", "seeds=[0]"])
    ):
        ctx = Context(
            cfg,
            spec,
            dataset,
            split,
            torch.device("cpu"),
            torch.tensor(dataset.mean),
            torch.tensor(dataset.std),
        )
        method = get_method(spec.method)(cfg)
        stage = next(s for s in method.stages() if s.name == "finetune")
        batches = list(stage_batches(ctx, method, stage, epoch=0))
        assert len(batches) == steps_per_epoch(ctx, stage)
        assert all(b.x is not None and len(b.x) == cfg.optim.batch_size for b in batches)
        counts[spec.method] = len(batches)
    assert counts["baseline"] == counts["swwae_all"] == cfg.schedule.finetune.steps
    # 100 labels are 4 batches of 32: the baseline cycles them, as the decoders do
    assert counts["baseline"] > len(split.labeled) // cfg.optim.batch_size


def test_with_every_image_labeled_pool_stages_read_the_labeled_set():
    """labels=1.0 (the paper's ImageNet setting) leaves no pool: the decoder stages
    reconstruct the labeled batch itself (one pass over the labeled set, no second
    batch) instead of taking no step."""
    from harness.data import load_or_store_split
    from harness.engine.batches import stage_batches, steps_per_epoch
    from harness.engine.context import Context

    cfg = load_config(["methods=[swwae_all]", "labels=[1.0]", "seeds=[0]"])
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(Path("unused"), dataset, "1.0", 0, store=False)
    assert len(split.unlabeled) == 0 and len(split.labeled) == len(dataset.train)
    spec = next(s for s in make_plan(cfg) if s.method == "swwae_all")
    ctx = Context(
        cfg, spec, dataset, split, torch.device("cpu"),
        torch.tensor(dataset.mean), torch.tensor(dataset.std),
    )  # fmt: skip
    method = get_method("swwae_all")(cfg)
    stage = next(s for s in method.stages() if s.name == "decoder_layerwise")
    batches = list(stage_batches(ctx, method, stage, epoch=0))
    assert len(batches) == steps_per_epoch(ctx, stage) > 0
    assert sum(len(b.x) for b in batches) == len(split.labeled)
    assert all(b.u == [] for b in batches)


def test_a_pretrained_file_that_does_not_fit_the_model_exits_2(tmp_path):
    wrong = tmp_path / "vgg_small_3.pt"
    torch.save(build_encoder("vgg_small_3", 1, 10, 12).state_dict(), wrong)
    result = run_cli(
        "methods=[swwae_all]", f"model.pretrained={wrong}", f"results={tmp_path / 'r'}"
    )
    assert result.returncode == 2
    assert f"model.pretrained='{wrong}' does not load into model VGG" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_every_method_reads_as_many_images_per_step_as_the_baseline(tmp_path):
    """Equal work: with every image labeled the decoders reconstruct the labeled batch
    itself (no second batch); with a pool they read the baseline's labeled images per
    step plus a pool batch. history.csv records the images each stage read."""

    def stage_images(labels: str, *more: str) -> dict[str, pd.DataFrame]:
        results = tmp_path / labels
        args = [
            "methods=[baseline,swwae_first,sae_layerwise]",
            f"labels=[{labels}]",
            "seeds=[0]",
            "progress=false",
            "report.plots=false",
            "schedule.pretrain.epochs=1",
            "schedule.decoder_layerwise.epochs=1",
            "schedule.decoder_topdown.epochs=1",
            "schedule.finetune.epochs=2",
            f"results={results}",
            *more,
        ]
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        out = {}
        for method, folder in records(results).items():
            history = pd.read_csv(folder / "history.csv")
            out[method] = history.groupby("stage")[["images_labeled", "images_unlabeled"]].sum()
        return out

    # a pass over the set per epoch
    full = stage_images("1.0", "schedule.pretrain.steps=0", "schedule.finetune.steps=0")
    train = 1348  # digits' training set, all labeled: each epoch is one pass over it
    for method, read in full.items():
        epochs = {"pretrain": 1, "decoder_layerwise": 1, "decoder_topdown": 1, "finetune": 2}
        expected = [[epochs[stage] * train, 0] for stage in read.index]
        assert read.to_numpy().tolist() == expected, method
    assert full["swwae_first"].loc["finetune"].equals(full["baseline"].loc["finetune"])
    some = stage_images("500")  # the suite's 10 fine-tune steps for every method
    assert some["baseline"].loc["finetune"].tolist() == [2 * 10 * 32, 0]
    for method in ("swwae_first", "sae_layerwise"):  # the same labeled images, plus the pool
        assert some[method].loc["finetune"].tolist() == [2 * 10 * 32, 2 * 10 * 64]
