"""The run store (harness.store): atomic writes, streamed checkpoints, safe loads."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from harness.engine.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from harness.errors import UsageError
from harness.seeding import rng_state, seed_everything, set_rng_state
from harness.store import RunRecord, atomic_write_bytes


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_bytes(atomic, b"x")
    assert atomic.read_bytes() == b"x"
    assert oct(atomic.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_checkpoint_is_streamed_into_its_temp_file_and_gets_the_plain_mode(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    real_save = torch.save
    seen = []

    def save_and_look(obj, handle):
        real_save(obj, handle)
        handle.flush()
        # the bytes are in the temp file beside the target, not in a buffer in memory
        seen.extend((p.name, p.stat().st_size) for p in tmp_path.glob(".checkpoint.pt.*.tmp"))

    monkeypatch.setattr(torch, "save", save_and_look)
    weights = {"w": torch.arange(1000.0)}
    atomic_torch_save(weights, target)
    assert len(seen) == 1 and seen[0][1] == target.stat().st_size > 4000
    assert torch.equal(load_weights(target)["w"], weights["w"])
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert oct(target.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)
    assert _files(tmp_path) == ["checkpoint.pt", "plain"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_checkpoint_save_leaves_the_old_file_and_no_temp_file(
    tmp_path, monkeypatch, error
):
    target = tmp_path / "checkpoint.pt"
    atomic_torch_save({"w": torch.zeros(3)}, target)
    old = target.read_bytes()

    def half_save(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise error("killed mid-save")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(error, match="killed mid-save"):
        atomic_torch_save({"w": torch.ones(3)}, target)
    assert target.read_bytes() == old
    assert _files(tmp_path) == ["checkpoint.pt"]


def _draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.concatenate([np.random.rand(3), np.random.randn(3)]).tolist(),
        torch.rand(3).tolist(),
    )


def test_rng_states_survive_a_weights_only_checkpoint_and_restore_every_draw(tmp_path):
    seed_everything("rng", 0)
    random.gauss(0, 1)  # a cached second gaussian in python's state...
    np.random.randn()  # ...and in numpy's (has_gauss, cached_gaussian)
    record = RunRecord(tmp_path / "run")
    save_checkpoint(record, {"rng": rng_state()})
    expected = _draws()
    seed_everything("something else", 1)
    _draws()
    set_rng_state(load_checkpoint(record)["rng"])  # torch.load(weights_only=True)
    assert _draws() == expected


def test_a_training_checkpoint_loads_weights_only_and_restores_every_part(tmp_path):
    """What harness.engine.lifecycle checkpoints: a state dict (with its _metadata), SGD momentum,
    a LambdaLR, and history rows whose error rates are numpy floats."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    top1 = 100.0 * (1.0 - np.array([True, False]).mean())  # np.float64, as error_rates gives
    history = [{"stage": "pretrain", "epoch": 1, "lr": 0.1, "top1_val": top1}]
    state = {
        "version": 2,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "history": history,
    }
    record = RunRecord(tmp_path / "run")
    save_checkpoint(record, state)
    loaded = load_checkpoint(record)
    assert loaded["history"] == history and type(loaded["history"][0]["top1_val"]) is float
    assert loaded["model"]._metadata == model.state_dict()._metadata
    restored = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    restored.load_state_dict(loaded["model"])
    again = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(again, lambda step: 0.5**step)
    again.load_state_dict(loaded["optimizer"])
    schedule.load_state_dict(loaded["scheduler"])
    assert schedule.last_epoch == scheduler.last_epoch == 1
    assert again.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.05
    buffers = [again.state[p]["momentum_buffer"] for p in restored.parameters()]
    assert all(
        torch.equal(mine, optimizer.state[p]["momentum_buffer"])
        for mine, p in zip(buffers, model.parameters(), strict=True)
    )


class RunsACommand:
    """Unpickling this runs ``os.system``: what a hostile checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_code_is_refused_and_runs_nothing(tmp_path):
    record = RunRecord(tmp_path / "run")
    marker = tmp_path / "ran"
    record.path.mkdir()
    torch.save({"model": {}, "payload": RunsACommand(marker)}, record.checkpoint_file)
    with pytest.raises(UsageError, match="posix.system") as refused:
        load_checkpoint(record)
    assert str(record.checkpoint_file) in str(refused.value)
    with pytest.raises(UsageError, match="not written as a plain state dict"):
        load_weights(record.checkpoint_file)
    assert not marker.exists()


def test_a_checkpoint_of_the_older_harness_asks_for_a_restart(tmp_path):
    """Its RNG state held numpy's tuple (with an ndarray): refused, with what to do."""
    record = RunRecord(tmp_path / "run")
    record.path.mkdir()
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch.save({"version": 1, "rng": old_rng}, record.checkpoint_file)
    with pytest.raises(UsageError) as refused:
        load_checkpoint(record)
    message = str(refused.value)
    assert str(record.checkpoint_file) in message
    assert "older harness" in message and "must be restarted" in message
    assert f"delete {record.checkpoint_file}" in message
    assert "\n" not in message
