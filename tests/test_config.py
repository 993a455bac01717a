from __future__ import annotations

import shutil

import pytest

from harness.config import load_config, parse_overrides
from harness.errors import UsageError
from harness.method import available_methods
from harness.plan import make_plan, resolve_methods
from tests.conftest import FASHION_MNIST, needs_fashion_mnist


def test_overrides_merge_with_types_and_nesting():
    cfg = load_config(
        [
            "suite=digits",
            "seeds=[0,1]",
            "labels=[100,0.5]",
            "optim.batch_size=16",
            "schedule.pretrain.epochs=7",
        ]
    )
    assert list(cfg.seeds) == [0, 1]
    assert list(cfg.labels) == [100, 0.5]
    assert cfg.optim.batch_size == 16
    assert cfg.schedule.pretrain.epochs == 7
    assert cfg.schedule.finetune.epochs == 20  # from the suite file


def test_scalar_given_to_list_key_becomes_a_list():
    assert parse_overrides(["seeds=3", "methods=baseline"]) == ["seeds=[3]", "methods=[baseline]"]
    assert list(load_config(["seeds=3"]).seeds) == [3]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["suite=nope"], "unknown suite 'nope'; valid choices: cifar100_ssl, cifar10_ssl, digits"),
        (
            ["bogus=1"],
            "unknown key in the command line 'bogus'; valid choices: adamatch, claims, comatch, "
            "compile, crmatch, dash, data, decoding, defixmatch, description",
        ),
        (["optim.momentun=0.5"], "'optim.momentun'; valid choices: optim.batch_size"),
        (
            ["schedule.pretrain.epoch=3"],
            "valid choices: schedule.pretrain.epochs, schedule.pretrain.eval_every, "
            "schedule.pretrain.lr",
        ),
        (["optim.batch_size=big"], "bad value for key 'optim.batch_size'"),
        (["seeds=[a]"], "bad value for key 'seeds[0]'"),
        (["device=tpu"], "unknown value for device 'tpu'; valid choices: auto, cpu, cuda"),
        (["launcher=moon"], "unknown value for launcher 'moon'; valid choices: inprocess"),
        (["data.crop=20"], "data.crop (20) must not exceed data.resize (16)"),
        (["nonsense"], "argument 'nonsense' is not of the form key=value"),
        (["model.dropout=2"], "model.dropout must lie in [0, 1), got 2.0"),
        (["optim.momentum=-0.1"], "optim.momentum must be >= 0, got -0.1"),
        (["labels=[1,"], "an override is not valid YAML"),
        (["description=${oops}"], "bad value for key 'description'"),
        (["methods=[]"], "methods must list at least one method"),
    ],
)
def test_bad_config_names_the_value_and_the_choices(argv, expected):
    with pytest.raises(UsageError) as error:
        load_config(argv)
    assert expected in str(error.value)


def test_methods_all_and_unknown_method():
    # the default suite schedules every stage kind and gives the Ladder family its MLP:
    # `all` there is every registered method, the baseline first
    on_digits = resolve_methods(load_config(["methods=[all]"]))
    assert on_digits[0] == "baseline" and set(on_digits) == set(available_methods())
    # a suite without a `train` stage leaves out the one-stage methods
    on_vgg = resolve_methods(load_config(["suite=fashion_mnist", "methods=[all]"]))
    assert "vat" not in on_vgg and on_vgg[0] == "baseline" and "swwae_all" in on_vgg
    # the Ladder's methods train only their own models: `all` leaves them out elsewhere
    assert not any(name.startswith("ladder") for name in on_vgg)
    fashion_train = ["suite=fashion_mnist", "methods=[all]", "schedule.train.epochs=1"]
    fashion_train.append("schedule.train.lr=0.001")
    on_ladder = resolve_methods(load_config([*fashion_train, "model.name=ladder_mlp"]))
    assert {"baseline", "ladder", "ladder_gamma", "ladder_supervised"} <= set(on_ladder)
    # ... unless a method's own model is given under per_method
    own = resolve_methods(load_config([*fashion_train, "per_method.ladder.model.name=ladder_mlp"]))
    assert "ladder" in own and "ladder_gamma" not in own and "vat" in own
    unknown_one = "unknown method 'nope'; valid choices: adamatch, baseline"
    with pytest.raises(UsageError, match=unknown_one):
        resolve_methods(load_config(["methods=[nope]"]))


def test_run_ids_are_stable_and_depend_on_what_changes_numbers():
    first = make_plan(load_config(["seeds=[0,1]"]))
    again = make_plan(load_config(["seeds=[0,1]"]))
    assert [r.run_id for r in first] == [r.run_id for r in again]
    assert len({r.run_id for r in first}) == len(first) == 4  # 2 budgets x 2 seeds
    # execution-only keys keep the id; a schedule change makes a new run
    same = make_plan(load_config(["seeds=[0,1]", "progress=false", "results=/elsewhere"]))
    assert [r.run_id for r in same] == [r.run_id for r in first]
    other = make_plan(load_config(["seeds=[0,1]", "schedule.pretrain.epochs=5"]))
    assert not {r.run_id for r in other} & {r.run_id for r in first}


def test_missing_stage_schedule_is_a_usage_error(tmp_path):
    suite = tmp_path / "mine.yaml"
    suite.write_text("schedule:\n  pretrain: {epochs: 1, lr: 0.1}\n")
    with pytest.raises(UsageError, match="needs schedule.finetune"):
        make_plan(load_config([f"suite={suite}"]))


def test_pretrained_none_and_loader_auto_resolve_before_run_ids(tmp_path):
    from harness.config import ffcv_installed
    from harness.plan import make_plan

    default = make_plan(load_config([]))
    named = make_plan(load_config(["model.pretrained=none", "data.loader=torchvision"]))
    assert load_config(["model.pretrained=none"]).model.pretrained == ""
    # digits is in memory: its loader is not part of a run's id
    assert [s.run_id for s in named] == [s.run_id for s in default]
    cfg = load_config(["suite=imagenet_full"])
    assert cfg.data.loader == "torchvision"  # auto, and no data.beton
    cfg = load_config(["suite=imagenet_full", f"data.beton={tmp_path}"])
    assert cfg.data.loader == ("ffcv" if ffcv_installed() else "torchvision")


def _ids(*args: str) -> dict[tuple[str, str, int], str]:
    return {
        (s.method, s.labels, s.train_seed): s.run_id
        for s in make_plan(load_config(["methods=[baseline,swwae_all]", *args]))
    }


def test_a_run_id_holds_only_what_the_methods_training_reads(tmp_path):
    import torch

    from harness.models import build_encoder

    first = _ids()
    # evaluation batch size, pictures, launcher and resource keys never enter an id
    quiet = ["eval.batch_size=7", "decoding.samples=2", "launcher=local_parallel", "parallel=5"]
    assert _ids(*quiet, "slurm.mem_gb=3", "slurm.cpus_per_task=9", "report.last_k=1") == first
    # the unlabeled batch size: read by the decoders' pool stages, not by the baseline
    other = _ids("optim.unlabeled_batch_size=32")
    for key, run in first.items():
        assert (other[key] == run) == (key[0] == "baseline"), key
    # with every image labeled no stage draws a pool batch: no run reads it
    assert _ids("labels=[1.0]") == _ids("labels=[1.0]", "optim.unlabeled_batch_size=32")
    # threads change CPU numbers, so they enter CPU runs' ids
    assert not set(_ids("threads=2").values()) & set(first.values())
    # so does flushing subnormals, where it is on; off is every earlier id
    assert _ids("flush_denormal=false") == first
    assert not set(_ids("flush_denormal=true").values()) & set(first.values())
    assert _ids("device=cuda", "flush_denormal=true") == _ids("device=cuda")  # CPU math only
    # a pretrained file enters by its content: another path to the same bytes is the same run
    cfg = load_config([])
    encoder = build_encoder(cfg.model.name, 1, 10, cfg.data.crop)
    one, two, changed = tmp_path / "a.pt", tmp_path / "moved" / "a.pt", tmp_path / "c.pt"
    torch.save(encoder.state_dict(), one)
    two.parent.mkdir()
    shutil.copy(one, two)
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    torch.save(encoder.state_dict(), changed)
    from_one = _ids(f"model.pretrained={one}")
    assert from_one == _ids(f"model.pretrained={two}")
    assert not set(from_one.values()) & set(_ids(f"model.pretrained={changed}").values())
    assert not set(from_one.values()) & set(first.values())


def test_flush_denormal_sets_the_cpu_math_of_each_run_both_ways():
    """A run sets flushing on or off, so a run in the same process as an earlier one
    (``launcher=inprocess``) never inherits its mode."""
    import torch

    from harness.engine.lifecycle import configure_cpu_math

    smallest = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # 1.4e-45, no math
    threads = torch.get_num_threads()
    try:
        if not configure_cpu_math(1, True):
            pytest.skip("this CPU cannot flush subnormal floats")
        assert (smallest * 2).item() == 0.0
        assert configure_cpu_math(1, False) is False
        assert (smallest * 2).item() == 2 * smallest.item() > 0
    finally:
        configure_cpu_math(threads, False)


@needs_fashion_mnist
def test_a_dataset_enters_a_run_id_by_its_content_not_its_path(tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(FASHION_MNIST, copy)
    fashion = ["suite=fashion_mnist"]
    here = _ids(*fashion)
    assert _ids(*fashion, f"data.path={FASHION_MNIST}/") == here
    assert _ids(*fashion, f"data.path={copy}") == here


def test_a_method_family_brings_its_own_section_without_the_engine_knowing_it(tmp_path):
    """``register_settings``: defaults, types, the family's own checks, the one-line
    unknown-key error and the run-id rule all come from the family's dataclass."""
    from dataclasses import dataclass

    from harness.config import SETTINGS, register_settings, run_relevant

    @register_settings("toy", id_exclude=("plot_every",))
    @dataclass
    class ToySettings:
        weight: float = 1.0
        plot_every: int = 10

        def __post_init__(self):
            if not self.weight >= 0:
                raise UsageError(f"toy.weight must be >= 0, got {self.weight}")

    try:  # the schema gains the section registered after its first use (a plugin's)
        cfg = load_config([f"results={tmp_path}", "toy.weight=2.5"])
        assert cfg.toy.weight == 2.5 and cfg.toy.plot_every == 10
        with pytest.raises(UsageError, match=r"^toy.weight must be >= 0, got -1.0$"):
            load_config(["toy.weight=-1"])
        with pytest.raises(
            UsageError, match="unknown key .*'toy.nope'.*toy.plot_every, toy.weight"
        ):
            load_config(["toy.nope=1"])
        with pytest.raises(UsageError, match="bad value for key 'toy.weight'"):
            load_config(["toy.weight=heavy"])
        declared = run_relevant(cfg, ["pretrain"], ("toy",))
        assert declared["toy"] == {"weight": 2.5}  # plot_every never enters an id
        assert "toy" not in run_relevant(cfg, ["pretrain"], ())  # nor another method's id
    finally:
        SETTINGS.pop("toy")
