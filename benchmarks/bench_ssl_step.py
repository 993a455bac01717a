"""The classic SSL family: training-step time per method vs the baseline, beside the
FLOP ratio, and the strong augmentation's share of a FixMatch step.

One process, real MNIST (or digits where MNIST was not fetched), the SSL suite's
model and batch sizes (``suites/mnist_ssl.yaml``). Every method takes the trainer's
own step (``harness.engine.loop.train_one_epoch``) of its training stage on a batch
that carries the views it asks for (``Method.unlabeled_views``); the baseline takes
its labeled-only step. Methods alternate round by round and the median step time of
each is reported. FLOPs of one step (forward + backward) come from
``torch.utils.flop_counter``. Goal: time ratio <= 1.15 x FLOP ratio. A larger batch
is slower per FLOP on a CPU (its activations leave the caches), so each method is
also timed against the baseline's step on as many labeled images as make the same
FLOPs ("same-FLOP baseline"): what is left is the method's own overhead. The input side
is timed apart: the weak and strong views of one unlabeled batch, made as the
trainer makes them (``Context.prepare``: crop, flip, RandAugment + Cutout,
normalization), against the FixMatch step they feed.

    python benchmarks/bench_ssl_step.py                 # this CPU, 1 thread (a run's default)
    python benchmarks/bench_ssl_step.py --threads 2
    python benchmarks/bench_ssl_step.py --methods fixmatch,simmatch,comatch
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.config import config_for, load_config  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.data.datasets import MNIST_DEFAULT  # noqa: E402
from harness.engine.context import Context  # noqa: E402
from harness.engine.loop import (  # noqa: E402
    make_optimizer,
    make_scheduler,
    set_trainable,
    train_one_epoch,
)
from harness.method import Batch, get_method  # noqa: E402
from harness.models import build_encoder  # noqa: E402
from harness.plan import RunSpec  # noqa: E402
from harness.seeding import torch_generator  # noqa: E402

METHODS = (
    "baseline",
    "pseudo_label",
    "pi_model",
    "mean_teacher",
    "vat",
    "mixmatch",
    "fixmatch",
    "flexmatch",
    "freematch",
    "softmatch",
    "uda",
    "adamatch",
    "dash",
    "defixmatch",
    "remixmatch",
    "crmatch",
    "simmatch",
    "comatch",
)
# FixMatch's descendants at the suite's FixMatch ratio (mnist_ssl: mu 3); Dash timed past
# its warm-up (the bench's batch is at step 0: no warm-up)
MU = [f"{name}.mu=3" for name in METHODS[7:]] + ["dash.warmup_steps=0"]


def suite_args() -> list[str]:
    mnist = (Path(MNIST_DEFAULT).expanduser() / "train-images-idx3-ubyte").is_file()
    if mnist:
        return ["suite=mnist_ssl", *MU]
    return ["schedule.train.epochs=1", "optim.unlabeled_batch_size=96", "fixmatch.mu=3", *MU]


def context(cfg, dataset) -> Context:
    spec = RunSpec(cfg.suite, "bench", "100", 0, 0, "bench")
    return Context(
        cfg,
        spec,
        dataset,
        None,  # type: ignore[arg-type]  (no split: the bench picks its images itself)
        torch.device("cpu"),
        torch.tensor(dataset.mean),
        torch.tensor(dataset.std),
    )


def batch_for(ctx: Context, method, generator: torch.Generator) -> Batch:
    """One step's batch, its views made as the trainer makes them."""
    images = ctx.dataset.train.images
    n, m = ctx.cfg.optim.batch_size, method.unlabeled_batch_size()
    x = ctx.prepare(images[:n], generator, n, method.labeled_view)
    y = torch.from_numpy(ctx.dataset.train.targets[:n])
    pool = images[n : n + m]
    u = [ctx.prepare(pool, generator, m, view) for view in method.unlabeled_views]
    batch = Batch(x=x, y=y, u=u if any(s.unlabeled for s in method.stages()) else [])
    batch.u_index, batch.pool_size = torch.arange(m), m  # FlexMatch's records
    batch.x_index, batch.labeled_size = torch.arange(len(x)), len(x)  # SimMatch's bank
    batch.x_views = [ctx.prepare(images[:n], generator, n, v) for v in method.labeled_extra_views]
    return batch


def setup(name: str, cfg, dataset):
    own = config_for(cfg, name)
    method = get_method(name)(own)
    torch.manual_seed(0)
    encoder = build_encoder(own.model.name, dataset.channels, dataset.num_classes, own.data.crop)
    model = method.build_model(encoder, dataset)
    stage = method.stages()[0]
    params = set_trainable(model, method, stage)
    optimizer = make_optimizer(own, params, 1e-4)
    scheduler = make_scheduler(own, optimizer, 10**9)
    batch = batch_for(context(own, dataset), method, torch_generator("bench", 0))
    return model, method, stage, optimizer, scheduler, batch


def same_flop_baseline(cfg, dataset, images: int):
    """The baseline's setup on a labeled batch of ``images`` real images."""
    model, method, stage, optimizer, scheduler, batch = setup("baseline", cfg, dataset)
    ctx = context(cfg, dataset)
    x = ctx.prepare(dataset.train.images[:images], torch_generator("bench-big", 0), images)
    y = torch.from_numpy(dataset.train.targets[:images])
    return model, method, stage, optimizer, scheduler, Batch(x=x, y=y)


def step_flops(model, method, stage, batch) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        loss = sum(method.loss(model, stage, batch).values())
        loss.backward()
    model.zero_grad(set_to_none=True)
    method.pop_scalars()
    return counter.get_total_flops()


def timed_steps(setup_tuple, steps: int) -> float:
    model, method, stage, optimizer, scheduler, batch = setup_tuple
    tic = time.perf_counter()
    train_one_epoch(
        model, method, stage, optimizer, scheduler, [batch] * steps, amp=False, grad_clip=0.0
    )
    return (time.perf_counter() - tic) / steps


def input_seconds(cfg, dataset, views: tuple[str, ...], rounds: int) -> float:
    """Median seconds to make ``views`` of one FixMatch unlabeled batch."""
    method = get_method("fixmatch")(cfg)
    ctx = context(cfg, dataset)
    m = method.unlabeled_batch_size()
    pool = dataset.train.images[:m]
    generator = torch_generator("bench-input", 0)
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        for view in views:
            ctx.prepare(pool, generator, m, view)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS[1:]),
        help="comma-separated, timed beside the baseline (default: every one)",
    )
    args = parser.parse_args()
    chosen = args.methods.split(",")
    unknown = sorted(set(chosen) - set(METHODS[1:]))
    if unknown:
        parser.error(f"unknown --methods {', '.join(unknown)}; valid: {', '.join(METHODS[1:])}")
    torch.set_num_threads(args.threads)
    cfg = load_config(suite_args() + [f"threads={args.threads}"])
    dataset = load_dataset(cfg.data)
    names = ["baseline", *(name for name in METHODS[1:] if name in chosen)]
    setups = {name: setup(name, cfg, dataset) for name in names}
    flops = {name: step_flops(*s[:3], s[5]) for name, s in setups.items()}
    base_f = flops["baseline"]
    labeled = cfg.optim.batch_size
    for name in names[1:]:  # the baseline on as many images as make the method's FLOPs
        images = round(labeled * flops[name] / base_f)
        setups[f"{name}@"] = same_flop_baseline(cfg, dataset, images)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for name in setups:  # warm-up
        timed_steps(setups[name], 2)
    for _ in range(args.rounds):  # alternate so drift hits every method alike
        for name in setups:
            times[name].append(timed_steps(setups[name], args.steps))
    base_t = statistics.median(times["baseline"])
    print(
        f"\n{cfg.suite}: model {cfg.model.name}, crop {cfg.data.crop}, labeled batch "
        f"{cfg.optim.batch_size}, unlabeled {cfg.optim.unlabeled_batch_size} "
        f"(FixMatch: mu {cfg.fixmatch.mu}), {args.threads} threads, "
        f"median of {args.rounds} rounds x {args.steps} steps\n"
    )
    print(
        "| method | views | ms/step | time ratio | GFLOP/step | FLOP ratio | time/FLOP ratio "
        "| same-FLOP baseline ms | vs same-FLOP baseline |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for name in names:
        t = statistics.median(times[name])
        views = "+".join(setups[name][1].unlabeled_views) if setups[name][5].u else "-"
        same = statistics.median(times[f"{name}@"]) if name != "baseline" else t
        print(
            f"| {name} | {views} | {1000 * t:.1f} | {t / base_t:.2f} | {flops[name] / 1e9:.2f} | "
            f"{flops[name] / base_f:.2f} | {(t / base_t) / (flops[name] / base_f):.2f} "
            f"| {1000 * same:.1f} | {t / same:.2f} |"
        )
    if "fixmatch" not in names:
        return
    weak = input_seconds(cfg, dataset, ("weak",), args.rounds)
    both = input_seconds(cfg, dataset, ("weak", "strong"), args.rounds)
    step = statistics.median(times["fixmatch"])
    pool = get_method("fixmatch")(cfg).unlabeled_batch_size()
    print(
        f"\nFixMatch input, one unlabeled batch of {pool}:"
        f" weak view {1000 * weak:.1f} ms, weak + strong {1000 * both:.1f} ms; "
        f"strong augmentation {1000 * (both - weak):.1f} ms = "
        f"{100 * (both - weak) / (step + both):.1f} % of a step with its input "
        f"({1000 * step:.1f} ms of training)"
    )


if __name__ == "__main__":
    main()
