"""``python -m methods.decoding.invert suite=NAME method=swwae_first [layer=L] [key=value ...]``

Network inversion pictures from stored runs: val images beside their
reconstructions from each layer 1..``layer``, for the method asked for and its
counterpart with the other unpooling (SAE beside SWWAE, same loss placement),
plus the relative reconstruction error of every (method, layer) as numbers.

Layers are counted as the model counts them (``taps()`` of the model, then its
fc layers): VGG by macro-layer (pool1..pool5, fc6, fc7, fc8: 1-8 for VGG-16),
AlexNet by layer (pool1, pool2, conv3, conv4, pool5, fc6, fc7, fc8: its layers
1-8, conv1, conv2 and conv5 read after their max-pools). A pooled code goes
through the run's top-down decoder from its level; a conv inside a macro-layer
(AlexNet's conv3, conv4) starts that macro-layer's mirror at the mirror of that
conv (``Decoder.from_conv``), then the chain below; for an fc layer, an fc decoder
(fc8 -> fc7 -> fc6 -> top pool) is first trained here on the frozen network,
``fc_steps`` steps, and its prediction of the top pool goes through the same
decoder (SWWAE with the encoder's switches of the image).

The runs are those of the suite's first label budget and first seed (set
``labels=`` / ``seeds=`` to choose); they must be done (``python -m harness.run``
with the same settings). Writes ``<results>/<suite>/invert/<name>.png`` (columns
labelled: the original, then each layer for SAE, then for SWWAE; rows labelled by
val image and class) and ``.json`` (the errors), and prints the error table.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from harness.cli import Command, own_keys, run_command
from harness.config import load_config, suite_schema
from harness.data import Dataset, center_crop_batches, load_dataset
from harness.engine.checkpoint import load_weights
from harness.errors import UsageError, unknown
from harness.images import grid_array
from harness.method import available_methods, get_method
from harness.models import MacroEncoder, build_encoder, require
from harness.plan import RunSpec, make_plan
from harness.seeding import derive_seed, numpy_rng
from harness.store import atomic_write_bytes, atomic_write_text, run_record
from methods.decoding.decoders import FcDecoder, fc_codes

KINDS = ("sae", "swwae")
KEYS: dict[str, type] = {
    "method": str,
    "layer": int,
    "images": int,
    "fc_steps": int,
    "val_images": int,
}
COMMAND = Command(
    usage=(
        "python -m methods.decoding.invert method=NAME [layer=L] [images=N] [fc_steps=S] "
        "[val_images=V] [suite=NAME] [key=value ...]"
    ),
    summary=(
        "Network-inversion pictures: val images beside their SAE and SWWAE reconstructions "
        "from each layer 1..layer of the stored runs of a decoding pathway (first label "
        "budget, first seed), and the relative reconstruction error of each layer. Writes "
        "<results>/<suite>/invert/<method>-labels<L>-seed<S>-layer<N>.png and .json."
    ),
    keys=[
        ("method=(required)", "a decoding pathway; it is drawn beside its other-unpooling twin"),
        ("layer=<top pool>", "deepest layer drawn, in the model's numbering (1..taps+fc)"),
        ("images=8", "val images drawn (rows)"),
        ("fc_steps=500", "training steps of the fc decoder, for layers above the top pool"),
        ("val_images=0", "val images the errors are measured on (0 = the whole val set)"),
    ],
    schema=suite_schema,
)


def pair_of(method: str) -> list[str]:
    """``swwae_first`` -> ``["sae_first", "swwae_first"]`` (SAE first, as in the paper)."""
    kind, _, placement = method.partition("_")
    if kind not in KINDS or not placement:
        raise unknown("method to invert (a decoding pathway)", method, _decoding_methods())
    get_method(method)
    return [f"{k}_{placement}" for k in KINDS]


def _decoding_methods() -> list[str]:

    return [m for m in available_methods() if m.partition("_")[0] in KINDS]


def _count(own: dict, key: str, default: int, minimum: int = 1) -> int:
    value = own.get(key, default)
    if value < minimum:
        raise UsageError(f"{key} must be >= {minimum}, got {value}")
    return value


def first_run_of(cfg: DictConfig, plan: list[RunSpec]) -> tuple[str, int]:
    """(label budget, seed) of the runs shown: the suite's first of each."""
    return plan[0].labels, cfg.seeds[0]


def load_models(
    cfg: DictConfig, names: list[str], plan: list[RunSpec]
) -> dict[str, torch.nn.Module]:
    """The final weights of each named method's run (first budget, first seed)."""
    dataset = load_dataset(cfg.data)
    budget, seed = first_run_of(cfg, plan)
    models = {}
    for name in names:
        spec = next(
            s for s in plan if s.method == name and s.labels == budget and s.split_seed == seed
        )
        record = run_record(cfg.results, cfg.suite, spec.run_id)
        if not record.is_done():
            raise UsageError(
                f"run {spec.run_id} ({spec.describe()}) is not done; first run: python -m "
                f"harness.run suite={cfg.suite} methods=[{','.join(names)}] labels=[{budget}] "
                f"seeds=[{seed}] (with the same overrides)"
            )
        method = get_method(name)(cfg)
        last_stage = method.stages()[-1].name
        encoder = build_encoder(
            cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop
        )
        model = method.build_model(encoder, dataset)
        model.load_state_dict(load_weights(record.stage_file(last_stage), map_location="cpu"))
        models[name] = model.eval()
    return models


def fc_names(encoder: MacroEncoder) -> list[str]:
    """fc6, fc7, ...: one per Linear layer of the classifier (VGG's and AlexNet's names)."""
    linears = [m for m in encoder.classifier if isinstance(m, torch.nn.Linear)]
    return [f"fc{6 + i}" for i in range(len(linears))]


def layer_names(encoder: MacroEncoder) -> list[str]:
    """Layers 1..n as the model counts them: its taps, then its fc layers."""
    return [tap.name for tap in encoder.taps()] + fc_names(encoder)


def _crops(cfg: DictConfig, dataset: Dataset, part: str, indices: np.ndarray, batch: int):
    """Normalized center crops of ``dataset.<part>`` (train or val) on the CPU."""
    images = dataset.train if part == "train" else dataset.val
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    return center_crop_batches(images, indices, batch, cfg.data.resize, cfg.data.crop, mean, std)


def check_fc_input(encoder: MacroEncoder, channels: int, crop: int) -> None:
    """An fc decoder predicts the top pool from fc6's input: fc6 must read it whole."""
    with torch.no_grad():
        top = encoder.encode(torch.zeros(1, channels, crop, crop)).pooled[-1]
    fc6 = next(m for m in encoder.classifier if isinstance(m, torch.nn.Linear))
    if top[0].numel() != fc6.in_features:
        raise UsageError(
            f"fc6 of this model reads {fc6.in_features} values but its top pool at crop {crop} "
            f"has {top[0].numel()} (an average pool between them); inversion from fc layers "
            "needs a crop at which fc6 reads the top pool whole"
        )


def train_fc_decoder(cfg: DictConfig, model: torch.nn.Module, steps: int) -> FcDecoder:
    """Invert the fc layers of a frozen network: each fc decoder layer learns, from the
    clean code of its level, the level below (relative squared error, Adam), on
    center crops of training images in a seeded order."""
    dataset = load_dataset(cfg.data)
    classifier = model.encoder.classifier
    with torch.no_grad():
        first = next(_crops(cfg, dataset, "train", np.arange(2), 2))
        top_shape = tuple(model.encode(first).pooled[-1].shape[1:])
    torch.manual_seed(derive_seed("invert-fc", cfg.seeds[0]))
    fc = FcDecoder(classifier, top_shape)
    optimizer = torch.optim.Adam(fc.parameters(), lr=1e-3)
    order = numpy_rng("invert-fc-order", cfg.seeds[0]).permutation(len(dataset.train))
    batches = _crops(cfg, dataset, "train", np.resize(order, steps * 64), 64)
    for x in tqdm(batches, total=steps, desc="fc decoder", disable=not cfg.progress):
        with torch.no_grad():
            enc = model.encode(x)
            codes = fc_codes(classifier, enc.pooled[-1])
            targets = [codes[1], codes[0], enc.pooled[-1]]  # fc7, fc6, pool: what each predicts
        loss = sum(
            (out - t).pow(2).mean() / t.pow(2).mean().clamp(min=1e-12)
            for out, t in zip(fc.layerwise(codes), targets, strict=True)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return fc.eval()


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module, fc: FcDecoder | None, x: torch.Tensor, layer: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the image target, its reconstructions from layers 1..``layer``) from one encoder
    pass: a tap through the decoder from its level (or from its conv), an fc code
    through the fc decoder and then the whole decoder."""
    enc = model.encode(x, activations=True)
    target = model.targets(x, enc)[0]
    taps = model.encoder.taps()
    images = []
    codes = fc_codes(model.encoder.classifier, enc.pooled[-1]) if layer > len(taps) else []
    for number in range(1, layer + 1):
        if number <= len(taps):
            tap = taps[number - 1]
            if tap.conv is None:
                outputs = model.decoder.topdown(enc, start=tap.level + 1)
            else:
                outputs = model.decoder.from_conv(enc, tap.level, tap.conv)
        else:
            fc_level = number - len(taps) - 1
            top = fc(codes[fc_level], start=fc_level)[-1]
            outputs = model.decoder.topdown(enc, code=top)
        images.append(outputs[0])
    return target, images


@torch.no_grad()
def invert(
    cfg: DictConfig,
    models: dict[str, torch.nn.Module],
    fcs: dict[str, FcDecoder | None],
    layer: int,
    rows: int,
    val_images: int = 0,
) -> tuple[list[list[torch.Tensor]], pd.DataFrame]:
    """Picture rows (original, then each model's reconstructions from layers 1..layer)
    and the relative error of every (model, layer) over the val set (its first
    ``val_images``; 0 = all)."""
    dataset = load_dataset(cfg.data)
    names = layer_names(next(iter(models.values())).encoder)
    error = {(name, level): 0.0 for name in models for level in range(1, layer + 1)}
    energy = 0.0
    picture: list[list[torch.Tensor]] = []
    count = len(dataset.val) if val_images == 0 else min(val_images, len(dataset.val))
    for x in _crops(cfg, dataset, "val", np.arange(count), cfg.eval.batch_size):
        columns: list[torch.Tensor] = []
        for name, model in models.items():
            target, images = reconstruct(model, fcs[name], x, layer)
            if not columns:
                energy += target.pow(2).sum().item()
                columns.append(model.to_pixels(target[:rows]))
            for level, image in enumerate(images, start=1):
                error[name, level] += (image - target).pow(2).sum().item()
                columns.append(model.to_pixels(image[:rows]))
        if not picture:
            picture = [[column[i] for column in columns] for i in range(len(columns[0]))]
    table = pd.DataFrame(
        [
            {
                "method": name,
                "layer": level,
                "name": names[level - 1],
                "relative_error": value / energy,
            }
            for (name, level), value in error.items()
        ]
    )
    return picture, table


def save_labeled_grid(
    rows: list[list[torch.Tensor]],
    groups: list[tuple[list[str], int]],
    columns: list[str],
    row_labels: list[str],
    path: Path,
    scale: int = 3,
    gap: int = 2,
) -> None:
    """``rows`` of images as a PNG with a header of two lines (each group's label,
    widest that fits first, over its columns; each column's label) and a label left of
    each row, so the picture says what it shows without its caption."""
    array = grid_array(rows, scale, gap)
    grid = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
    _, h, w = rows[0][0].shape
    step_x, step_y, tile = (w + gap) * scale, (h + gap) * scale, w * scale
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = math.ceil(measure.textbbox((0, 0), "Ag", font=font)[3]) + 4
    left = max(math.ceil(measure.textlength(label, font=font)) for label in row_labels) + 8
    top = 2 * line + 2
    canvas = Image.new("RGB", (left + grid.width, top + grid.height), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)

    def centered(text: str, x0: int, width: int, y: int) -> None:
        x = x0 + (width - draw.textlength(text, font=font)) / 2
        draw.text((x, y), text, fill="black", font=font)

    first = 0
    for choices, span in groups:
        x0, width = left + first * step_x, span * step_x - gap * scale
        fits = [c for c in choices if draw.textlength(c, font=font) <= width] or choices[-1:]
        centered(fits[0], x0, width, 2)
        draw.line([(x0, line + 1), (x0 + width, line + 1)], "gray")  # the group's extent
        first += span
    for index, text in enumerate(columns):
        centered(text, left + index * step_x, tile, line + 3)
    for index, text in enumerate(row_labels):
        y = top + index * step_y + (h * scale - line) / 2
        draw.text((4, y), text, fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def picture_labels(
    names: list[str], layers: list[str], dataset: Dataset, rows: int
) -> tuple[list[tuple[list[str], int]], list[str], list[str]]:
    """(groups over the columns, each column's label, each row's label)."""
    groups: list[tuple[list[str], int]] = [(["original", "orig."], 1)]
    for name in names:
        kind = name.partition("_")[0].upper()
        groups.append(([f"{kind} ({name})", kind], len(layers)))
    columns = [""] + layers * len(names)
    targets = dataset.val.targets[:rows]
    row_labels = [f"val {i}: {dataset.classes[int(t)]}" for i, t in enumerate(targets)]
    return groups, columns, row_labels


def body(argv: list[str]) -> int:
    own, rest = own_keys(argv, KEYS, "methods.decoding.invert")
    if "method" not in own:
        raise UsageError("method= is required: one of " + ", ".join(sorted(_decoding_methods())))
    names = pair_of(own["method"])
    cfg = load_config([*rest, f"methods=[{','.join(names)}]"])
    dataset = load_dataset(cfg.data)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    for name in sorted(names, key=lambda name: name != own["method"]):  # the asked one first
        require(encoder, cfg.model.name, get_method(name).needs, name)
    layers = layer_names(encoder)
    taps = len(encoder.taps())
    layer = _count(own, "layer", taps)
    if layer > len(layers):
        raise UsageError(
            f"layer={layer}, but model {cfg.model.name!r} has layers 1..{len(layers)} "
            f"({', '.join(layers)})"
        )
    if layer > taps:
        check_fc_input(encoder, dataset.channels, cfg.data.crop)
    rows = _count(own, "images", 8)
    fc_steps = _count(own, "fc_steps", 500)
    val_images = _count(own, "val_images", 0, minimum=0)
    plan = make_plan(cfg)
    models = load_models(cfg, names, plan)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    fcs = {
        name: train_fc_decoder(cfg, model, fc_steps) if layer > taps else None
        for name, model in models.items()
    }
    picture, table = invert(cfg, models, fcs, layer, rows, val_images)
    out = Path(cfg.results) / cfg.suite / "invert"
    budget, seed = first_run_of(cfg, plan)
    stem = f"{own['method']}-labels{budget}-seed{seed}-layer{layer}"
    groups, columns, row_labels = picture_labels(names, layers[:layer], dataset, len(picture))
    save_labeled_grid(picture, groups, columns, row_labels, out / f"{stem}.png")
    atomic_write_text(out / f"{stem}.json", table.to_json(orient="records", indent=2) + "\n")
    wide = table.pivot(index=["layer", "name"], columns="method", values="relative_error")
    print(f"relative reconstruction error of the val images from each layer ({cfg.suite}):\n")
    print(wide.reset_index().to_markdown(index=False, floatfmt=".4f"))
    shown = ["original"] + [f"{n} from {layers[i]}" for n in names for i in range(layer)]
    print(f"\npicture: {out / stem}.png (columns: {', '.join(shown)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, body, argv)


if __name__ == "__main__":
    sys.exit(main())
