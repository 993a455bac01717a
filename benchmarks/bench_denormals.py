"""Subnormal weights on a CPU: a forward and backward pass's time with and without
``flush_denormal``, beside a fresh model's.

Why: weight decay drives the weights of units that stop receiving gradient toward
zero, through the subnormal floats (below 1.2e-38 in fp32), which x86 CPUs multiply
by microcode assist. A Fashion-MNIST Mean Teacher run of ``suites/fashion_mnist_ssl.yaml``
had 18% of its first classifier layer's weights subnormal late in training and took
3x as long an epoch as a seed beside it; ``flush_denormal=true`` makes the CPU treat
them as zero.

One process, real images (Fashion-MNIST where Debian's dataset-fashion-mnist is
installed, else MNIST, else digits), the suite's model and labeled batch. The same
model is timed in three states, alternating round by round: its fresh weights; the
same weights with ``--fraction`` of the entries of the fully connected layers'
weights (``--where linear``, as in that run: 18% and 17% of its first two classifier
layers, under 6% of any convolution's) or of every weight tensor (``--where all``)
replaced by subnormal values, without and with flushing. A step is the forward and
backward pass of the baseline's loss (no optimizer step, so the weights stay as set;
Adam's own update is not timed).

    python benchmarks/bench_denormals.py                  # 1 thread, as flushing needs
    python benchmarks/bench_denormals.py --where all --fraction 0.02
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_ssl_step import context  # noqa: E402  (the trainer's Context, no split)

from harness.config import load_config  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.data.datasets import MNIST_DEFAULT  # noqa: E402
from harness.engine.lifecycle import configure_cpu_math  # noqa: E402
from harness.method import Batch, get_method  # noqa: E402
from harness.models import build_encoder  # noqa: E402
from harness.seeding import torch_generator  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def suite_args() -> list[str]:
    if FASHION.is_dir():
        return ["suite=fashion_mnist_ssl"]
    if (Path(MNIST_DEFAULT).expanduser() / "train-images-idx3-ubyte").is_file():
        return ["suite=mnist_ssl"]
    return []


def subnormal_copy(model: torch.nn.Module, fraction: float, where: str) -> dict[str, torch.Tensor]:
    """The model's weights with ``fraction`` of the entries of each chosen weight
    tensor (``where``: the fully connected layers', or all) set to subnormal values of
    random sign (magnitudes 1e-41 to 1e-38, seeded)."""
    linear = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        chosen_tensor = name in linear if where == "linear" else name.endswith("weight")
        if chosen_tensor and tensor.is_floating_point():
            chosen = torch.rand(tensor.shape, generator=generator) < fraction
            magnitude = 10 ** torch.empty(tensor.shape).uniform_(-41, -38, generator=generator)
            sign = torch.randint(0, 2, tensor.shape, generator=generator) * 2 - 1
            tensor[chosen] = (sign * magnitude).to(tensor.dtype)[chosen]
        state[name] = tensor
    return state


def subnormal_share(state: dict[str, torch.Tensor]) -> float:
    tiny = torch.finfo(torch.float32).tiny
    weights = [t for name, t in state.items() if name.endswith("weight")]
    count = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in weights)
    return count / sum(t.numel() for t in weights)


def step_seconds(model, method, stage, batch: Batch, steps: int) -> float:
    tic = time.perf_counter()
    for _ in range(steps):
        loss = sum(method.loss(model, stage, batch).values())
        loss.backward()
        model.zero_grad(set_to_none=True)
    method.pop_scalars()
    return (time.perf_counter() - tic) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.18)
    parser.add_argument("--where", choices=("linear", "all"), default="linear")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(suite_args())  # threads=1: the flush is per thread
    dataset = load_dataset(cfg.data)
    method = get_method("baseline")(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    model = method.build_model(encoder, dataset)
    model.train()
    stage = method.stages()[0]
    n = cfg.optim.batch_size
    images, generator = dataset.train.images[:n], torch_generator("bench", 0)
    x = context(cfg, dataset).prepare(images, generator, n, method.labeled_view)
    batch = Batch(x=x, y=torch.from_numpy(dataset.train.targets[:n]))

    fresh = {name: t.clone() for name, t in model.state_dict().items()}
    subnormal = subnormal_copy(model, args.fraction, args.where)
    states = {
        "fresh weights": (fresh, False),
        "subnormal weights, not flushed": (subnormal, False),
        "subnormal weights, flush_denormal=true": (subnormal, True),
    }
    flushes = configure_cpu_math(1, True)
    times: dict[str, list[float]] = {name: [] for name in states}
    for round_index in range(args.rounds + 1):  # the first round warms up
        for name, (state, flush) in states.items():
            configure_cpu_math(1, flush)
            model.load_state_dict(state)
            seconds = step_seconds(model, method, stage, batch, args.steps)
            if round_index:
                times[name].append(seconds)
    configure_cpu_math(1, False)

    base = statistics.median(times["fresh weights"])
    print(
        f"\n{cfg.suite}: model {cfg.model.name}, crop {cfg.data.crop}, labeled batch {n}, "
        f"forward + backward, 1 thread, median of {args.rounds} rounds x "
        f"{args.steps} steps; {100 * subnormal_share(subnormal):.1f}% of all weights "
        f"subnormal ({args.fraction:.0%} of {args.where}); this CPU can flush: {flushes}\n"
    )
    print("| weights | ms/step | vs fresh |")
    print("|---|--:|--:|")
    for name in states:
        t = statistics.median(times[name])
        print(f"| {name} | {1000 * t:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
