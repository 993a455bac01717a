"""Is a GPU ready for the ImageNet suites? The parts of ``benchmarks/gpu_check.sh``.

Each subcommand appends its rows to ``OUT/rows.jsonl``; ``table`` turns them into one
Markdown table (``OUT/gpu_check.md`` and stdout). Nothing is downloaded: the images
are generated.

- ``data OUT``: generated pictures as JPEGs in the ImageNet layout (``OUT/jpeg``) and
  their FFCV ``.beton`` files (``OUT/beton``, ``harness.data.prepare``); starts a
  fresh ``rows.jsonl``;
- ``step OUT``: VGG-16 at 224 px, bf16 autocast, channels_last: the trainer's step
  (``train_one_epoch``) of ``baseline`` and ``swwae_all`` (half the batch labeled, half
  unlabeled), images/s, achieved TFLOP/s (``FlopCounterMode``) and the share of the
  card's bf16 dense peak, on a synthetic batch already on the GPU and fed from the
  ``.beton`` through FFCV (goal: within 10% of synthetic), with ``compile`` off and on
  (``harness.engine.loop.step_module``, what ``compile=true`` runs);
- ``nccl OUT`` (under ``torchrun``): a process group on NCCL and one ``all_reduce``;
- ``e2e-args OUT``: the ``harness.run`` arguments (one a line) of a tiny ImageNet-shaped
  suite on the generated data (``imagenet_full``, ``baseline`` and ``swwae_all``, two
  steps a stage), which the shell script runs under ``torchrun``; ``e2e-record OUT``
  records how that ended (exit status, runs done, report written);
- ``table OUT``.

``--cpu --tiny`` runs every part small on the CPU (a 3-macro-layer VGG at 28 px, gloo
instead of NCCL), so that the tests run all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_decoding_step import (  # noqa: E402
    BF16_PEAK_TFLOPS,
    imagenet_shaped,
    setup,
    step_flops,
    timed_steps,
)
from bench_loaders import epoch_order  # noqa: E402

from harness.config import ffcv_installed, load_config  # noqa: E402
from harness.data import augment_batch, normalize  # noqa: E402
from harness.data.loaders import ffcv_batches  # noqa: E402
from harness.engine.distributed import World  # noqa: E402
from harness.engine.loop import step_module  # noqa: E402
from harness.engine.provenance import provenance  # noqa: E402
from harness.method import Batch  # noqa: E402

METHODS = ("baseline", "swwae_all")
GOAL_FFCV = 0.9  # FFCV-fed images/s at least this share of synthetic
# what each part's rows' check says, in order; the table names a part that left none
PARTS = ("data", "train step", "all_reduce (torchrun)", "end to end (torchrun)")


@dataclass(frozen=True)
class Size:
    """How big each part is: the real check, or ``--tiny`` for the CPU."""

    model: str
    crop: int
    resize: int  # stored shorter side (the .beton's), the 256 of 256/224
    batch: int  # images per step (swwae_all: half labeled, half unlabeled)
    steps: int  # timed steps
    warmup: int  # steps before timing (the compile happens here)
    classes: int
    train_per_class: int
    val_per_class: int
    width: int  # of the generated JPEGs
    height: int
    overrides: tuple[str, ...] = ()  # keys the model needs beside imagenet_full's


FULL = Size("vgg16", 224, 256, 64, 30, 5, 4, 256, 16, 500, 375)
TINY = Size(
    "vgg_small_3", 28, 36, 8, 2, 1, 4, 8, 4, 64, 48, ("decoding.weights=[0.01,0.0001,0.0001]",)
)


@dataclass
class Row:
    check: str
    method: str = ""
    compile: str = ""
    input: str = ""
    images_s: float | None = None
    tflops: float | None = None
    peak_pct: float | None = None
    note: str = ""


def add_row(out: Path, row: Row) -> None:
    with open(out / "rows.jsonl", "a") as handle:
        handle.write(json.dumps(asdict(row)) + "\n")


def machine(cpu: bool) -> dict:
    """The device's name and the versions, as a run's ``config.yaml`` records them."""
    return provenance(torch.device("cpu" if cpu else "cuda"), World(), flushing=False)


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 TFLOP/s where we know it: H100 SXM and H200 989, not an H100
    PCIe (756) or NVL (835), whose names also say H100; None otherwise."""
    if "PCIe" in name or "NVL" in name:
        return None
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def make_jpegs(root: Path, size: Size, seed: int = 0) -> int:
    """Generated pictures in the ImageNet layout: smooth random colour fields with
    pixel noise (so a JPEG holds as much detail as a photo's, ~10x a smooth image's),
    ``size.width`` x ``size.height``; returns how many training images."""
    rng = np.random.default_rng(seed)
    for part, per_class in (("train", size.train_per_class), ("val", size.val_per_class)):
        for label in range(size.classes):
            folder = root / part / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
                smooth = np.asarray(coarse.resize((size.width, size.height), Image.BICUBIC))
                noisy = smooth + rng.normal(0, 12, smooth.shape)
                image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
                image.save(folder / f"n{label:08d}_{n}.JPEG", quality=90)
    return size.classes * size.train_per_class


def data(args: argparse.Namespace, size: Size) -> None:
    from harness.data.prepare import prepare_imagenet

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("")
    tic = time.perf_counter()
    n = make_jpegs(out / "jpeg", size)
    note = f"{n} train JPEGs of {size.width}x{size.height} generated"
    if ffcv_installed():
        workers = len(os.sched_getaffinity(0))
        prepare_imagenet(out / "jpeg", out / "beton", short_side=size.resize, workers=workers)
        note += f", written to .beton (shorter side {size.resize})"
    else:
        note += "; ffcv is not installed: no .beton"
    add_row(out, Row("data", note=f"{note} in {time.perf_counter() - tic:.0f} s"))


def step_config(size: Size):
    return load_config(
        [
            "suite=imagenet_full",
            f"model.name={size.model}",
            f"data.crop={size.crop}",
            f"data.resize={size.resize}",
            f"optim.batch_size={size.batch}",
            *size.overrides,
        ]
    )


def synthetic_batch(name: str, size: Size, device: torch.device) -> Batch:
    """``size.batch`` random images on the device; swwae_all's half labeled, half pool."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size.batch, 3, size.crop, size.crop, generator=gen).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (size.batch,), generator=gen).to(device)
    return _split(name, x, y)


def _split(name: str, x: torch.Tensor, y: torch.Tensor) -> Batch:
    if name == "baseline":
        return Batch(x=x, y=y)
    half = len(x) // 2
    return Batch(x=x[:half], y=y[:half], u=[x[half:]])


def fed_batches(
    name: str, beton: Path, size: Size, device: torch.device, threads: int
) -> Iterator[Batch]:
    """``size.steps`` batches read from ``beton`` through FFCV, cropped, flipped and
    normalized on the device as the trainer's ``Context.prepare`` does."""
    n = size.classes * size.train_per_class
    order: list[np.ndarray] = []
    for shuffle in range(size.steps):  # passes over the file until there are enough
        order += [b for b in epoch_order(n, size.batch, shuffle) if len(b) == size.batch]
        if len(order) >= size.steps:
            break
    mean = torch.tensor(imagenet_shaped().mean, device=device)
    std = torch.tensor(imagenet_shaped().std, device=device)
    generator = torch.Generator().manual_seed(0)
    for images, labels in ffcv_batches(str(beton), order[: size.steps], size.resize, threads):
        x = augment_batch(images.to(device, non_blocking=True), size.crop, True, generator)
        x = normalize(x, mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield _split(name, x, labels.to(device, non_blocking=True) % 1000)


def step_row(
    name: str,
    compiled: bool,
    source: str,
    images: int,
    seconds: float,
    flops: float,
    peak: float | None,
    note: str,
) -> Row:
    """A row of ``images`` a step at ``seconds`` a step, ``flops`` a step."""
    tflops = flops / seconds / 1e12
    pct = 100 * tflops / peak if peak else None
    on = "on" if compiled else "off"
    return Row("train step", name, on, source, images / seconds, tflops, pct, note)


def step(args: argparse.Namespace, size: Size) -> None:
    device = torch.device("cpu" if args.cpu else "cuda")
    amp = device.type == "cuda"
    peak = bf16_peak(machine(args.cpu)["device"]) if amp else None
    cfg = step_config(size)
    beton = args.out / "beton" / "train.beton"
    threads = len(os.sched_getaffinity(0))
    if beton.is_file():  # FFCV compiles its pipeline on first use: not in the timings
        list(fed_batches("baseline", beton, size, device, threads))
    for name in METHODS:
        batch = synthetic_batch(name, size, device)
        s = setup(name, cfg, imagenet_shaped(), batch, channels_last=amp)
        flops = step_flops(*s[:3], s[5], amp=amp)

        for compiled in (False, True):
            module = step_module(s[0], s[1], s[2], compile=compiled)
            tic = time.perf_counter()
            timed_steps(s, size.warmup, amp, module)
            note = f"{size.warmup} warm-up steps: {time.perf_counter() - tic:.1f} s"
            synthetic = timed_steps(s, size.steps, amp, module)
            add_row(
                args.out,
                step_row(name, compiled, "synthetic", size.batch, synthetic, flops, peak, note),
            )
            if beton.is_file():
                batches = fed_batches(name, beton, size, device, threads)
                fed = timed_steps(s, size.steps, amp, module, batches)
                share = synthetic / fed
                verdict = "met" if share >= GOAL_FFCV else "missed"
                note = f"{share:.2f} of synthetic (goal {GOAL_FFCV}: {verdict})"
                add_row(
                    args.out,
                    step_row(name, compiled, "FFCV .beton", size.batch, fed, flops, peak, note),
                )
        del s
        if amp:
            torch.cuda.empty_cache()
    if not beton.is_file():
        add_row(args.out, Row("train step", input="FFCV .beton", note="skipped: no .beton"))


def nccl(args: argparse.Namespace, size: Size) -> None:
    """One all_reduce over the process group torchrun describes (NCCL; gloo with --cpu)."""
    backend = "gloo" if args.cpu else "nccl"
    device = torch.device("cpu")
    if not args.cpu:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        world = dist.get_world_size()
        value = torch.ones(1, device=device)
        dist.all_reduce(value)
        right = int(value.item()) == world
        version = "" if args.cpu else " NCCL " + ".".join(map(str, torch.cuda.nccl.version()))
        if dist.get_rank() == 0:
            note = f"world of {world}, sum {'right' if right else 'WRONG'};{version}"
            add_row(args.out, Row(f"{backend} all_reduce (torchrun)", note=note))
    finally:
        dist.destroy_process_group()
    if not right:
        raise RuntimeError(f"all_reduce over {world} processes gave {value.item()}")


def e2e_args(args: argparse.Namespace, size: Size) -> None:
    out = args.out.resolve()
    loader = "ffcv" if (out / "beton" / "train.beton").is_file() else "torchvision"
    stages = ("pretrain", "decoder_layerwise", "decoder_topdown", "finetune")
    keys = [
        "suite=imagenet_full",
        f"methods=[{','.join(METHODS)}]",
        f"data.path={out / 'jpeg'}",
        *([f"data.beton={out / 'beton'}"] if loader == "ffcv" else []),
        f"data.loader={loader}",
        f"data.resize={size.resize}",
        f"data.crop={size.crop}",
        f"data.num_workers={min(8, len(os.sched_getaffinity(0)))}",
        f"model.name={size.model}",
        *size.overrides,
        *(f"schedule.{stage}.{key}" for stage in stages for key in ("epochs=1", "steps=2")),
        f"optim.batch_size={size.batch // 2}",
        f"optim.unlabeled_batch_size={size.batch // 2}",
        f"eval.batch_size={2 * size.batch}",
        f"device={'cpu' if args.cpu else 'cuda'}",
        f"results={out / 'results'}",
        "progress=false",
        "logger=[csv]",
    ]
    print("\n".join(keys))


def e2e_record(args: argparse.Namespace, size: Size) -> None:
    suite = args.out / "results" / "imagenet_full"
    done = len(list(suite.glob("*/metrics.json")))
    report = (suite / "report" / "table.md").is_file()
    note = (
        f"exit {args.rc}; {done} of {len(METHODS)} runs done; report "
        f"{'written' if report else 'missing'}; {args.seconds:.0f} s (log: e2e.log)"
    )
    if args.rc:
        log = (args.out / "e2e.log").read_text(errors="replace").strip().splitlines()
        note += f"; last line: {log[-1] if log else '(empty)'}"
    add_row(args.out, Row("end to end (torchrun)", ", ".join(METHODS), note=note))


def _cell(value: float | None) -> str:
    """Three significant digits, whole numbers from 100 on."""
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(args: argparse.Namespace, size: Size) -> None:
    rows = [
        Row(**json.loads(line))
        for line in (args.out / "rows.jsonl").read_text().split("\n")
        if line
    ]
    for part in PARTS:  # a part killed (timeout) or never started left no row
        if not any(part in row.check for row in rows):
            rows.append(Row(part, note="no result: the part did not finish (see stderr)"))
    where = machine(args.cpu)
    peak = bf16_peak(where["device"]) if not args.cpu else None
    lines = [
        f"GPU check on {where['device']} (bf16 dense peak: "
        f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown'}); torch {where['torch']}, CUDA "
        f"{where['cuda']}, cuDNN {where['cudnn']}, harness {where['git_commit']}; "
        f"{size.model} at {size.crop} px, {size.batch} images a step",
        "",
        "| check | method | compile | input | images/s | TFLOP/s | % of bf16 peak | notes |",
        "|:--|:--|:--|:--|--:|--:|--:|:--|",
    ]
    for row in rows:
        cells = [row.check, row.method, row.compile, row.input]
        cells += [_cell(row.images_s), _cell(row.tflops), _cell(row.peak_pct), row.note]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (args.out / "gpu_check.md").write_text(text)
    print(text, end="")


COMMANDS = {
    "data": data,
    "step": step,
    "nccl": nccl,
    "e2e-args": e2e_args,
    "e2e-record": e2e_record,
    "table": table,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"gpu_check: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo for nccl)")
    parser.add_argument("--tiny", action="store_true", help="a small model and data set")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rc", type=int, default=0, help="e2e-record: the run's exit status")
    parser.add_argument("--seconds", type=float, default=0.0, help="e2e-record: its wall time")
    args = parser.parse_args(argv)
    if not args.cpu and args.command in ("step", "nccl") and not torch.cuda.is_available():
        parser.error(f"{args.command}: torch sees no CUDA device; --cpu runs it on the CPU")
    if args.command != "data" and not (args.out / "rows.jsonl").is_file():
        parser.error(f"{args.out / 'rows.jsonl'} does not exist: run `data {args.out}` first")
    size = TINY if args.tiny else FULL
    try:
        COMMANDS[args.command](args, size)
    except Exception as error:
        if args.command not in ("e2e-args", "table"):
            add_row(args.out, Row(args.command, note=f"failed: {type(error).__name__}: {error}"))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
