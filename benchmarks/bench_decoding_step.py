"""Decoding pathways: training-step time per variant vs the baseline, beside the FLOP ratio.

One process, one real batch (Fashion-MNIST if installed, else digits), the
suite's model and batch sizes. Every variant takes the trainer's own step
(``harness.engine.loop.train_one_epoch``) of the joint fine-tune (step 4: cross-entropy
on the labeled batch, reconstruction on labeled + unlabeled); the baseline takes
its classification-only fine-tune step. Variants alternate round by round and
the median step time of each is reported. FLOPs of one step (forward +
backward) come from ``torch.utils.flop_counter``. Goal: time ratio <= 1.1 x
FLOP ratio, i.e. no overhead beyond the arithmetic. Peak memory: each variant
again in a fresh subprocess that loads only the batch (peak RSS, VmHWM, on CPU;
max allocated on CUDA).

    python benchmarks/bench_decoding_step.py                  # small VGG, this CPU
    python benchmarks/bench_decoding_step.py --gpu            # + VGG-16 224 px, bf16, batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.config import load_config  # noqa: E402
from harness.data import Dataset, ImageSet, center_crop, load_dataset, normalize  # noqa: E402
from harness.engine.loop import make_optimizer, make_scheduler, set_trainable, train_one_epoch  # noqa: E402
from harness.method import Batch, available_methods, get_method  # noqa: E402
from harness.models import build_encoder  # noqa: E402

# bf16 dense tensor-core peak, TFLOP/s, by device name fragment (vendor datasheets)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def suite_args() -> list[str]:
    fmnist = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file()
    return ["suite=fashion_mnist"] if fmnist else []


def setup(name: str, cfg, dataset: Dataset, batch: Batch, channels_last: bool = False):
    """Model, method, finetune stage, optimizer, scheduler and batch, as the trainer has them."""
    method = get_method(name)(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    model = method.build_model(encoder, dataset).to(batch.x.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stage = next(s for s in method.stages() if s.name == "finetune")
    params = set_trainable(model, method, stage)
    optimizer = make_optimizer(cfg, params, 1e-4)
    scheduler = make_scheduler(cfg, optimizer, 10**9)
    if not stage.unlabeled:  # the baseline's fine-tune sees the labeled batch only
        batch = Batch(x=batch.x, y=batch.y)
    return model, method, stage, optimizer, scheduler, batch


def finetuning_methods(cfg) -> list[str]:
    """The baseline and the decoding pathways: the methods with a ``finetune`` stage."""
    return [
        name
        for name in available_methods()
        if any(stage.name == "finetune" for stage in get_method(name)(cfg).stages())
    ]


def shaped(num_classes: int, channels: int, mean: tuple, std: tuple) -> Dataset:
    """A dataset's shape and normalization without its images (all a model needs)."""
    empty = ImageSet(targets=np.zeros(0, dtype=np.int64))
    classes = tuple(str(i) for i in range(num_classes))
    return Dataset("shape", empty, empty, classes, channels, tuple(mean), tuple(std))


def imagenet_shaped() -> Dataset:
    return shaped(1000, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def real_batch(cfg, device: torch.device) -> Batch:
    dataset = load_dataset(cfg.data)
    n, m = cfg.optim.batch_size, cfg.optim.unlabeled_batch_size
    images = center_crop(dataset.train.images[: n + m], cfg.data.crop)
    x = normalize(images, torch.tensor(dataset.mean), torch.tensor(dataset.std)).to(device)
    y = torch.from_numpy(dataset.train.targets[:n]).to(device)
    return Batch(x=x[:n], y=y, u=[x[n:]])


def step_flops(model, method, stage, batch, amp: bool) -> int:
    counter = FlopCounterMode(display=False)
    device_type = next(model.parameters()).device.type
    with counter:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = sum(method.loss(model, stage, batch).values())
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def timed_steps(setup_tuple, steps: int, amp: bool, loss_module=None, batches=None) -> float:
    """Seconds per trainer step over ``steps`` steps of ``batches`` (default: the setup's
    batch again and again), through ``loss_module`` where given (a compiled step)."""
    model, method, stage, optimizer, scheduler, batch = setup_tuple
    sync = torch.cuda.synchronize if batch.y.is_cuda else (lambda: None)
    sync()
    tic = time.perf_counter()
    train_one_epoch(
        model,
        method,
        stage,
        optimizer,
        scheduler,
        [batch] * steps if batches is None else batches,
        amp=amp,
        grad_clip=0.0,
        loss_module=loss_module,
    )
    sync()
    return (time.perf_counter() - tic) / steps


def peak_memory(variant: str, batch_file: Path, threads: int) -> float:
    """MiB of peak RSS of a fresh process that loads only the batch (not the dataset),
    builds the variant and takes a few steps."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-of",
            variant,
            f"--batch-file={batch_file}",
            f"--threads={threads}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def cpu_table(args) -> None:
    cfg = load_config(suite_args() + [f"threads={args.threads}"])
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    batch = real_batch(cfg, device)
    names = finetuning_methods(cfg)
    dataset = load_dataset(cfg.data)
    setups = {name: setup(name, cfg, dataset, batch) for name in names}
    flops = {name: step_flops(*setups[name][:3], setups[name][5], amp=False) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        timed_steps(setups[name], 2, amp=False)
    for _ in range(args.rounds):  # alternate so drift hits every variant alike
        for name in names:
            times[name].append(timed_steps(setups[name], args.steps, amp=False))
    base_t, base_f = statistics.median(times["baseline"]), flops["baseline"]
    print(
        f"\n{cfg.suite}: model {cfg.model.name}, crop {cfg.data.crop}, labeled batch "
        f"{cfg.optim.batch_size} + unlabeled {cfg.optim.unlabeled_batch_size}, "
        f"{args.threads} threads, median of {args.rounds} rounds x {args.steps} steps\n"
    )
    print(
        "| method | ms/step | time ratio | GFLOP/step | FLOP ratio | time/FLOP ratio | peak MiB |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    batch_file = Path(tempfile.mkdtemp()) / "batch.pt"
    shape = (dataset.num_classes, dataset.channels, dataset.mean, dataset.std)
    torch.save({"x": batch.x, "y": batch.y, "u": batch.u, "shape": shape}, batch_file)
    for name in names:
        t = statistics.median(times[name])
        mem = peak_memory(name, batch_file, args.threads)
        print(
            f"| {name} | {1000 * t:.1f} | {t / base_t:.2f} | {flops[name] / 1e9:.2f} | "
            f"{flops[name] / base_f:.2f} | {(t / base_t) / (flops[name] / base_f):.2f} | "
            f"{mem:.0f} |"
        )


def gpu_table(args) -> None:
    """VGG-16, 224 px, batch 64 (+ 64 unlabeled for decoders), bf16 autocast, channels_last."""
    device = torch.device("cuda")
    cfg = load_config(
        [
            "model.name=vgg16",
            "data.crop=224",
            "data.resize=256",
            "optim.batch_size=64",
            "optim.unlabeled_batch_size=64",
            "device=cuda",
            "decoding.weights=[1e-4,1e-12,1e-12,1e-12,1e-10]",
        ]
    )
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(128, 3, 224, 224, generator=gen).to(device, memory_format=torch.channels_last)
    batch = Batch(x=x[:64], y=torch.randint(0, 1000, (64,), generator=gen).to(device), u=[x[64:]])
    name_of = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name_of), None)
    print(f"\n{name_of}: VGG-16 224 px, batch 64 (+64 unlabeled), bf16 autocast, channels_last\n")
    print("| method | images/s | TFLOP/s | fraction of bf16 peak | peak GiB |")
    print("|---|--:|--:|--:|--:|")
    for name in ("baseline", "swwae_all"):
        s = setup(name, cfg, imagenet_shaped(), batch, channels_last=True)
        flops = step_flops(*s[:3], s[5], amp=True)
        timed_steps(s, 5, amp=True)
        torch.cuda.reset_peak_memory_stats()
        t = timed_steps(s, args.steps, amp=True)
        images = len(s[5].x) + sum(len(u) for u in s[5].u)
        tflops = flops / t / 1e12
        frac = f"{tflops / peak:.2f}" if peak else "?"
        print(
            f"| {name} | {images / t:.0f} | {tflops:.0f} | {frac} | "
            f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |"
        )
        del s
        torch.cuda.empty_cache()


def memory_of(variant: str, batch_file: str, threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = load_config(suite_args())
    saved = torch.load(batch_file)
    batch = Batch(x=saved["x"], y=saved["y"], u=saved["u"])
    s = setup(variant, cfg, shaped(*saved["shape"]), batch)
    timed_steps(s, 3, amp=False)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
    status = Path("/proc/self/status").read_text()
    peak_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    )
    print(json.dumps({"peak_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="also VGG-16 on CUDA")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        memory_of(args.memory_of, args.batch_file, args.threads)
        return
    cpu_table(args)
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: torch sees no CUDA device")
        gpu_table(args)


if __name__ == "__main__":
    main()
