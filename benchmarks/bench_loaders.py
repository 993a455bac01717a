"""Decode + augment throughput: FFCV .beton vs torchvision ImageFolder with PIL.

One JPEG folder in the ImageNet layout, made from Fashion-MNIST at ImageNet's
typical size (500x375, ``harness.data.prepare demo``), written once to a .beton
(``harness.data.prepare imagenet``). Each pipeline produces uint8 batches of
random 224 crops (with flips) of the 256 center square, with the same number of
workers (FFCV: threads; torchvision: processes), in one run, alternating:

- ``ffcv``: the harness's FFCV path (``ffcv_batches``: decode, center square,
  resize 256 in FFCV's compiled pipeline) + ``augment_batch``;
- ``torchvision (harness)``: the harness's fallback (DataLoader over
  ``decode_square``, PIL) + ``augment_batch``;
- ``torchvision (stock)``: ``torchvision.datasets.ImageFolder`` with
  ``Resize(256), RandomCrop(224), RandomHorizontalFlip, PILToTensor`` in a
  DataLoader, the textbook pipeline.

Goal: FFCV >= 5x torchvision. The first FFCV pass compiles its pipeline (numba)
and is reported apart.

    python benchmarks/bench_loaders.py [--images 1200] [--workers 2] [--passes 3]
    python benchmarks/bench_loaders.py --gpu   # + VGG-16 224 px training fed by FFCV vs
                                               #   synthetic tensors, ImageNet epoch times
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.data import augment_batch, epoch_batches, load_batches  # noqa: E402
from harness.data.datasets import ImageSet  # noqa: E402
from harness.data.files import scan_folder  # noqa: E402
from harness.data.loaders import ffcv_batches  # noqa: E402
from harness.data.prepare import make_demo_folder, prepare_imagenet  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_TRAIN = 1_281_167


# How the .beton stores images: prepare's default (JPEG, shorter side resized to 256,
# all the 256/224 pipeline reads), JPEG as the folder has it (500x375), and raw
# pixels at shorter side 256 (no JPEG decode at load time, ~10x the disk).
BETONS = {
    "ffcv, jpg, short side 256 (default)": {"write_mode": "jpg", "short_side": 256},
    "ffcv, jpg, full size": {"write_mode": "jpg", "short_side": 0},
    "ffcv, raw, short side 256": {"write_mode": "raw", "short_side": 256},
}
DEFAULT = next(iter(BETONS))


def make_data(root: Path, images: int) -> tuple[Path, dict[str, Path]]:
    folder = root / "jpeg"
    per_class = images // 4
    make_demo_folder(
        folder, FASHION_MNIST, classes=4, train_per_class=per_class, val_per_class=10,
        width=500, height=375,
    )  # fmt: skip
    outs = {}
    for n, (name, settings) in enumerate(BETONS.items()):
        outs[name] = root / f"ffcv-{n}"
        prepare_imagenet(folder, outs[name], parts=("train",), **settings)
    return folder, outs


def epoch_order(n: int, batch: int, seed: int) -> list[np.ndarray]:
    """A shuffled pass over ``n`` images, as the trainer draws one."""
    return epoch_batches(np.arange(n), batch, "bench", seed)


def timed(batches, generator: torch.Generator) -> tuple[float, int]:
    """Seconds and images of one pass, augmentation included."""
    tic, count = time.perf_counter(), 0
    for x, _ in batches:
        x = augment_batch(x, 224, True, generator)
        count += len(x)
    return time.perf_counter() - tic, count


def stock_torchvision(folder: Path, batch: int, workers: int, seed: int):
    from harness._torchvision_compat import import_torchvision

    tv = import_torchvision()
    T = tv.transforms
    dataset = tv.datasets.ImageFolder(
        str(folder / "train"),
        transform=T.Compose(
            [T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()]
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=generator
    )


def loader_table(args) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-loaders-"))
    folder, outs = make_data(root, args.images)
    scan = scan_folder(folder / "train")
    files = ImageSet(scan.targets, files=scan.files)
    betons = {name: str(out / "train.beton") for name, out in outs.items()}
    n = len(scan.files)
    jpeg_kib = sum(Path(f).stat().st_size for f in scan.files) / n / 1024
    print(f"{n} JPEGs of 500x375 (Fashion-MNIST, 4 classes, {jpeg_kib:.0f} KiB each), batch "
          f"{args.batch}, {args.workers} workers (FFCV threads, DataLoader processes)")  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in betons}
    times |= {"torchvision (harness)": [], "torchvision (stock)": []}
    generator = torch.Generator().manual_seed(0)
    first = {}
    for name, beton in betons.items():
        batches = ffcv_batches(beton, epoch_order(n, args.batch, 999), 256, args.workers)
        first[name] = n / timed(batches, generator)[0]
    for p in range(args.passes):  # alternating, so drifts in machine load hit all alike
        batches = epoch_order(n, args.batch, p)
        for name, beton in betons.items():
            seconds, count = timed(ffcv_batches(beton, batches, 256, args.workers), generator)
            times[name].append(count / seconds)
        seconds, count = timed(load_batches(files, batches, 256, args.workers), generator)
        times["torchvision (harness)"].append(count / seconds)
        tic, count = time.perf_counter(), 0
        for x, _ in stock_torchvision(folder, args.batch, args.workers, p):
            count += len(x)
        times["torchvision (stock)"].append(count / (time.perf_counter() - tic))
    base = statistics.median(times["torchvision (stock)"])
    rates = ", ".join(f"{rate:.0f}" for rate in first.values())
    print(f"\nfirst pass of each FFCV file (compiles its pipeline): {rates} images/s\n")
    print("| pipeline | images/s (median) | range | vs torchvision (stock) |")
    print("|:--|--:|--:|--:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {min(values):.0f}-{max(values):.0f} | {med / base:.2f}x |")
    return outs[DEFAULT]


class _ImageNetShaped:
    """What ``Method.build_model`` reads of a dataset, for VGG-16 on ImageNet."""

    channels, num_classes = 3, 1000
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _trainer_step(name: str, cfg, device: torch.device):
    """A function doing one finetune step of method ``name`` on (x, y), as the trainer
    does it (bf16 autocast, channels_last); swwae_all gets half labeled, half pool."""
    from harness.engine.loop import StageLoss, make_optimizer, set_trainable
    from harness.method import Batch, get_method
    from harness.models import build_encoder

    method = get_method(name)(cfg)
    torch.manual_seed(0)
    model = method.build_model(build_encoder("vgg16", 3, 1000, 224), _ImageNetShaped())
    model = model.to(device).to(memory_format=torch.channels_last)
    stage = next(s for s in method.stages() if s.name == "finetune")
    optimizer = make_optimizer(cfg, set_trainable(model, method, stage), 1e-3)
    loss_module = StageLoss(model, method, stage)
    split = name != "baseline"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        half = len(x) // 2 if split else len(x)
        batch = Batch(x=x[:half], y=y[:half], u=[x[half:]] if split else [])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(loss_module(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _rates(step, beton: str, n: int, args, device: torch.device) -> tuple[float, float]:
    """images/s of ``step`` on a synthetic batch already on the GPU, and fed by FFCV
    (decode, augment_batch, normalize on the GPU)."""
    from harness.data import normalize

    mean = torch.tensor([0.485, 0.456, 0.406], device=device)
    std = torch.tensor([0.229, 0.224, 0.225], device=device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    for _ in range(5):
        step(x, y)
    torch.cuda.synchronize()
    steps = max(1, n // args.batch) * args.passes
    tic = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    torch.cuda.synchronize()
    synthetic = steps * args.batch / (time.perf_counter() - tic)
    full = [b for b in epoch_order(n, args.batch, 999) if len(b) == args.batch]
    list(ffcv_batches(beton, full, 256, args.workers))  # compiles the pipeline
    tic, count = time.perf_counter(), 0
    for p in range(args.passes):
        batches = [b for b in epoch_order(n, args.batch, p) if len(b) == args.batch]
        for images, labels in ffcv_batches(beton, batches, 256, args.workers):
            images = augment_batch(images.to(device, non_blocking=True), 224, True, generator)
            images = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
            step(images, labels.to(device) % 1000)
            count += len(images)
    torch.cuda.synchronize()
    return synthetic, count / (time.perf_counter() - tic)


def gpu_table(args, beton_dir: Path) -> None:
    """VGG-16 training images/s fed by FFCV vs by a synthetic batch already on the GPU,
    and the time of one ImageNet epoch extrapolated for baseline and swwae_all."""
    from harness.config import load_config

    device = torch.device("cuda")
    cfg = load_config(["suite=imagenet_full"])
    n = min(args.images, 4 * (args.images // 4))
    rows = []
    for name in ("baseline", "swwae_all"):
        step = _trainer_step(name, cfg, device)
        rows.append((name, *_rates(step, str(beton_dir / "train.beton"), n, args, device)))
    print(f"\n{torch.cuda.get_device_name()}, VGG-16 224 px, bf16, batch {args.batch}, "
          f"FFCV with {args.workers} threads; the finetune step (swwae_all: half labeled, "
          "half unlabeled)\n")  # fmt: skip
    print("| method | synthetic images/s | FFCV-fed images/s | FFCV / synthetic | "
          "ImageNet epoch (FFCV-fed) |")  # fmt: skip
    print("|:--|--:|--:|--:|--:|")
    for name, synthetic, fed in rows:
        minutes = IMAGENET_TRAIN / fed / 60
        print(
            f"| {name} | {synthetic:.0f} | {fed:.0f} | {fed / synthetic:.2f} | {minutes:.1f} min |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        sys.exit("needs Debian's dataset-fashion-mnist")
    torch.set_num_threads(max(1, args.workers))
    out = loader_table(args)
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: torch sees no CUDA device")
        gpu_table(args, out)


if __name__ == "__main__":
    main()
