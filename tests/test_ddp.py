"""DistributedDataParallel on CPU (gloo): sharded evaluation and whole runs on 2 processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.config import load_config
from harness.data import load_dataset
from harness.engine.distributed import World, gather_rows, shard, trim_for_world
from harness.engine.evaluate import predict_topk
from harness.models import build_encoder
from harness.seeding import seed_everything
from tests.conftest import REPO, run_cli

# A short digits schedule; dropout off so that the two processes' only differences
# are the order of float sums in the gradient all-reduce.
RUN = [
    "methods=[baseline,swwae_first]",
    "labels=[500]",
    "seeds=[0]",
    "model.dropout=0",
    "schedule.pretrain.epochs=20",
    "schedule.decoder_layerwise.epochs=1",
    "schedule.decoder_topdown.epochs=1",
    "schedule.finetune.epochs=2",
    "threads=1",
    "progress=false",
    "report.plots=false",
]
TOP1_TOLERANCE = 2.5  # top-1 val error points, 2 processes vs 1 (11 of 449 images)
# The two runs' float sums differ in order from the first step; Adam and 13 epochs
# carry that into a slightly different model: trained to convergence (20 epochs), the two
# differ by 0.0-0.2 points on an AVX2 CPU and by 1.78 (8 images) on an AVX512 Xeon with
# AMX (at 8 epochs, still at 40-47% error, by up to 7 points on the AVX2 CPU).
AGREEMENT = 0.9


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _gloo_group(rank: int, size: int, port: int):
    """This spawned process as rank ``rank`` of a gloo group of ``size`` on ``port``."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _predict(model, data, indices) -> np.ndarray:
    return predict_topk(
        model, data.val, indices, dense=False, crop=12, resize=16, k=5, batch_size=64,
        mean=torch.tensor(data.mean), std=torch.tensor(data.std), device=torch.device("cpu"),
    )  # fmt: skip


def _sharded_eval(rank: int, size: int, port: int, out: str) -> None:
    with _gloo_group(rank, size, port):
        torch.set_num_threads(1)
        data = load_dataset(load_config([]).data)
        seed_everything("init", 0)
        model = build_encoder("vgg_small_2", 1, 10, 12)
        place = World(rank, size)
        indices = np.arange(len(data.val))
        local = _predict(model, data, shard(indices, place))
        gathered = gather_rows(local, len(indices), place)
        if rank == 0:
            np.save(out, gathered)


def test_sharded_evaluation_gathers_every_prediction_exactly_once(tmp_path):
    data = load_dataset(load_config([]).data)
    assert len(data.val) % 2 == 1  # 449: the two shards differ in size
    torch.set_num_threads(1)
    seed_everything("init", 0)
    expected = _predict(build_encoder("vgg_small_2", 1, 10, 12), data, np.arange(len(data.val)))
    out = tmp_path / "gathered.npy"
    mp.spawn(_sharded_eval, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    np.testing.assert_array_equal(np.load(out), expected)


def _decoding_model(data):
    from harness.method import get_method

    cfg = load_config(["decoding.samples=4"])
    seed_everything("init", 0)
    method = get_method("swwae_all")(cfg)
    return method, method.build_model(build_encoder("vgg_small_2", 1, 10, 12), data)


def _val_batches(data, indices):
    from harness.data import center_crop_batches

    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    return center_crop_batches(data.val, indices, 64, 16, 12, mean, std)


def _sharded_val_report(rank: int, size: int, port: int, out: str) -> None:
    from harness.engine.distributed import block, sum_over_ranks

    with _gloo_group(rank, size, port):
        torch.set_num_threads(1)
        data = load_dataset(load_config([]).data)
        method, model = _decoding_model(data)
        place = World(rank, size)
        folder = Path(out) if rank == 0 else None
        mine = block(np.arange(len(data.val)), place)
        report = method.val_report(
            model, _val_batches(data, mine), folder, reduce=lambda t: sum_over_ranks(t, place)
        )
        (Path(out) / f"report-{rank}.json").write_text(json.dumps(report))


def test_a_val_report_shared_by_two_processes_equals_one_processes(tmp_path):
    """Under DDP every rank reports on its block of val at once (no rank waits at a
    barrier while rank 0 alone goes through val); the sums give one process's numbers
    and rank 0 draws the same pictures."""
    torch.set_num_threads(1)
    data = load_dataset(load_config([]).data)
    method, model = _decoding_model(data)
    alone = tmp_path / "alone"
    alone.mkdir()
    expected = method.val_report(model, _val_batches(data, np.arange(len(data.val))), alone)
    shared = tmp_path / "shared"
    shared.mkdir()
    mp.spawn(_sharded_val_report, args=(2, _free_port(), str(shared)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((shared / f"report-{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5), key
    assert (shared / "samples.png").read_bytes() == (alone / "samples.png").read_bytes()


def _uneven_gradient(rank: int, size: int, port: int, out: str) -> None:
    from harness.engine.loop import StageLoss, train_one_epoch
    from harness.method import Batch, get_method

    with _gloo_group(rank, size, port):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        x = torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10
        y = torch.tensor([0, 1, 1, 0, 1])
        place = World(rank, size)
        rows = shard(np.arange(5), place)  # 3 rows on rank 0, 2 on rank 1
        batch = Batch(x=x[rows], y=y[rows], share=size * len(rows) / 5)
        method = get_method("baseline")(load_config([]))
        stage = method.stages()[0]
        loss_module = torch.nn.parallel.DistributedDataParallel(StageLoss(model, method, stage))
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        train_one_epoch(
            model, method, stage, optimizer, scheduler, iter([batch]),
            amp=False, grad_clip=0.0, loss_module=loss_module,
        )  # fmt: skip
        if rank == 0:
            torch.save(model.state_dict(), out)


def test_an_uneven_batch_weights_each_shard_by_its_rows(tmp_path):
    """DDP averages the ranks' gradients; with 3 and 2 rows that mean is not the batch's
    unless each rank's loss is weighted by its share (``Batch.share``)."""
    from harness.engine.loop import train_one_epoch
    from harness.method import Batch, get_method

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10
    y = torch.tensor([0, 1, 1, 0, 1])
    method = get_method("baseline")(load_config([]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_one_epoch(
        model, method, method.stages()[0], optimizer, scheduler, iter([Batch(x=x, y=y)]),
        amp=False, grad_clip=0.0,
    )  # fmt: skip
    out = tmp_path / "ddp.pt"
    mp.spawn(_uneven_gradient, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got[key], value)


def test_shards_cover_each_batch_once_and_a_batch_too_small_to_share_is_dropped():
    batch = np.arange(10, 17)
    parts = [shard(batch, World(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
    batches = [np.arange(8), np.arange(8, 9)]
    assert len(trim_for_world(batches, World(0, 2))) == 1
    assert len(trim_for_world(batches, World(0, 1))) == 2


def _metrics(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("digits/*/metrics.json")}


def test_two_processes_give_the_one_process_metrics_within_tolerance(tmp_path):
    one = run_cli(*RUN, f"results={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).parent / "torchrun"

    def run_two(results: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "harness.run", *RUN]
            + [f"results={results}"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,  # not a pytest-xdist worker's stdin (its channel)
            capture_output=True,
            text=True,
            timeout=300,
        )

    two_root = tmp_path / "two"
    two = run_two(two_root)
    if two.returncode != 0 and "terminate called without an active exception" in two.stderr:
        # Once in a full CI run (2026-12-05; the other xdist worker busy), a rank
        # aborted inside torch's C++ (std::terminate on a joinable thread, exit -6) 21 s
        # in, with no Python error; the same command then passed 4 times of 4 beside
        # two training processes, and the whole file 7 of 7 alone. That abort alone
        # gets one fresh try (in a new results root); any other failure fails here.
        print(f"torchrun aborted in torch's C++, trying once more:\n{two.stderr[-2000:]}")
        two_root = tmp_path / "two-again"
        two = run_two(two_root)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("| baseline |") == 1  # rank 0 alone reports
    single, double = _metrics(tmp_path / "one"), _metrics(two_root)
    assert single.keys() == double.keys() and len(single) == 2  # the same run ids
    for run_id, metrics in single.items():
        assert abs(metrics["top1_val"] - double[run_id]["top1_val"]) <= TOP1_TOLERANCE
        assert metrics["split_hash"] == double[run_id]["split_hash"]
        a = np.load(tmp_path / "one" / "digits" / run_id / "predictions.npz")
        b = np.load(two_root / "digits" / run_id / "predictions.npz")
        assert b["val_topk"].shape == a["val_topk"].shape == (449, 5)  # each image once
        agree = np.mean(a["val_topk"][:, 0] == b["val_topk"][:, 0])
        print(f"{run_id}: top-1 val {metrics['top1_val']:.2f} vs {double[run_id]['top1_val']:.2f}"
              f", same top-1 class on {agree:.3f} of val")  # fmt: skip
        assert agree >= AGREEMENT
    history = (two_root / "digits").glob("*/history.csv")
    assert all(len(h.read_text().splitlines()) > 1 for h in history)


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_other_launchers_under_torchrun_exit_2(launcher, tmp_path):
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0"}
    done = run_cli(f"launcher={launcher}", f"results={tmp_path}", env=env)
    assert done.returncode == 2
    assert f"launcher={launcher} under torchrun" in done.stderr
