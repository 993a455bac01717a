"""Harness training epoch vs a bare PyTorch loop, side by side in one process.

Both sides train the same model (same init), on the same images, with the same
batch size, optimizer, crops and normalization; the bare side is the ten lines
one would write by hand, the harness side is ``harness.engine.loop.train_one_epoch``
fed by ``stage_batches`` (seeded batches, Batch objects, the method's loss
dict, LR scheduler, progress bar). Epochs alternate between the two sides and
the median of each is reported, with the ratio (goal: <= 1.05).

    python benchmarks/bench_epoch_overhead.py              # digits and Fashion-MNIST
    python benchmarks/bench_epoch_overhead.py --default-suite   # + wall time, peak memory
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.config import load_config  # noqa: E402
from harness.data import draw_split, load_dataset  # noqa: E402
from harness.engine.batches import stage_batches  # noqa: E402
from harness.engine.context import Context  # noqa: E402
from harness.engine.loop import make_scheduler, train_one_epoch  # noqa: E402
from harness.method import get_method  # noqa: E402
from harness.models import build_encoder  # noqa: E402
from harness.plan import make_plan  # noqa: E402


def bare_epoch(model, optimizer, images, targets, indices, batch, crop, mean, std, gen) -> None:
    """What one writes by hand: shuffle, slice, random crop, normalize, step."""
    model.train()
    order = indices[torch.randperm(len(indices), generator=gen)]
    steps = torch.arange(crop)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        x, y = images[idx], targets[idx]
        n, _, h, w = x.shape
        top = torch.randint(0, h - crop + 1, (n,), generator=gen)
        left = torch.randint(0, w - crop + 1, (n,), generator=gen)
        rows, cols = (top[:, None] + steps), (left[:, None] + steps)
        x = x.permute(0, 2, 3, 1)[
            torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]
        ].permute(0, 3, 1, 2)
        x = (x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def compare(suite: list[str], labels: int, repeats: int) -> tuple[float, float, int]:
    cfg = load_config([*suite, f"labels=[{labels}]", "seeds=[0]", "progress=false"])
    spec = make_plan(cfg)[0]
    data = load_dataset(cfg.data)
    split = draw_split(data, labels, 0)
    method = get_method("baseline")(cfg)
    stage = method.stages()[0]
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    ctx = Context(cfg, spec, data, split, torch.device("cpu"), mean, std)

    def fresh():
        torch.manual_seed(0)
        model = build_encoder(cfg.model.name, data.channels, data.num_classes, cfg.data.crop)
        return model, torch.optim.Adam(
            model.parameters(), lr=1e-3, weight_decay=cfg.optim.weight_decay
        )

    bare_model, bare_opt = fresh()
    ours_model, ours_opt = fresh()
    steps = -(-len(split.labeled) // cfg.optim.batch_size)
    scheduler = make_scheduler(cfg, ours_opt, steps * (repeats + 1))
    images, targets = data.train.images, torch.from_numpy(data.train.targets)
    indices = torch.from_numpy(split.labeled)
    gen = torch.Generator().manual_seed(0)
    bare_times, ours_times = [], []

    def run_bare() -> float:
        tic = time.perf_counter()
        bare_epoch(
            bare_model,
            bare_opt,
            images,
            targets,
            indices,
            cfg.optim.batch_size,
            cfg.data.crop,
            mean,
            std,
            gen,
        )
        return time.perf_counter() - tic

    def run_ours(epoch: int) -> float:
        bar = tqdm(total=steps, disable=True)
        tic = time.perf_counter()
        train_one_epoch(
            ours_model,
            method,
            stage,
            ours_opt,
            scheduler,
            stage_batches(ctx, method, stage, epoch),
            amp=False,
            grad_clip=0.0,
            progress=bar,
        )
        return time.perf_counter() - tic

    for epoch in range(repeats + 1):  # epoch 0 warms both up and is not counted
        # alternate which side goes first, so neither always inherits a warm cache
        if epoch % 2:
            bare, ours = run_bare(), run_ours(epoch)
        else:
            ours, bare = run_ours(epoch), run_bare()
        if epoch:
            bare_times.append(bare)
            ours_times.append(ours)
    return statistics.median(bare_times), statistics.median(ours_times), steps


def default_suite() -> None:
    with tempfile.TemporaryDirectory() as results:
        tic = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "harness.run", f"results={results}", "progress=false"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"\ndefault suite (python -m harness.run): {wall:.1f} s wall, "
        f"peak RSS {peak:.0f} MiB, {torch.get_num_threads()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--default-suite", action="store_true")
    parser.add_argument("--only", choices=["digits", "fashion_mnist"], default=None)
    args = parser.parse_args()
    if args.default_suite:
        # first, while this process is small: a child's peak RSS counts pages it
        # shared with the parent before exec
        default_suite()
    cases = [
        ("digits / vgg_small_2 / bs 32", ["suite=digits"], 1000),
        ("fashion_mnist / vgg_small_3 / bs 64", ["suite=fashion_mnist"], 5000),
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} epochs per side\n"
    )
    print("| case | labeled | steps | bare loop s/epoch | harness s/epoch | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, suite, labels in cases:
        if args.only and not name.startswith(args.only):
            continue
        try:
            bare, ours, steps = compare(suite, labels, args.repeats)
        except Exception as error:  # noqa: BLE001 - e.g. Fashion-MNIST not installed
            print(f"| {name} | skipped: {error} | | | | |")
            continue
        print(f"| {name} | {labels} | {steps} | {bare:.3f} | {ours:.3f} | {ours / bare:.3f} |")


if __name__ == "__main__":
    main()
