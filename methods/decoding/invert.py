"""``python -m methods.decoding.invert suite=NAME method=swwae_first [layer=L] [key=value ...]``

Network inversion pictures from stored runs: val images beside their
reconstructions from each layer 1..``layer`` (the paper's numbering: the
macro-layers' pools, then fc6, fc7, fc8; 1-8 for VGG-16), for the method asked
for and its counterpart with the other unpooling (SAE beside SWWAE, same loss
placement), plus the per-layer relative reconstruction error over the whole val
set as numbers. A macro-layer's pooled code goes through the run's top-down
decoder; for an fc layer, an fc decoder (fc8 -> fc7 -> fc6 -> top pool) is first
trained here on the frozen network, ``fc_steps`` steps, and its prediction of
the top pool goes through the same decoder (SWWAE with the encoder's switches).

The runs are those of the suite's first label budget and first seed (set
``labels=`` / ``seeds=`` to choose); they must be done (``python -m harness.run``
with the same settings). Writes ``<results>/<suite>/invert/<name>.png`` and
``.json``, and prints the error table. Extra keys: ``method`` (required),
``layer`` (deepest layer shown; default the last macro-layer), ``images`` (rows;
default 8), ``fc_steps`` (default 500).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from harness.config import load_config
from harness.data import center_crop_batches, load_dataset
from harness.engine.checkpoint import load_weights
from harness.errors import UsageError, unknown
from harness.images import save_grid
from harness.method import get_method
from harness.models import build_encoder
from harness.plan import RunSpec, make_plan
from harness.seeding import derive_seed, numpy_rng
from harness.store import atomic_write_text, run_record
from methods.decoding.decoders import FcDecoder, fc_codes

INVERT_KEYS = ("method", "layer", "images", "fc_steps")
KINDS = ("sae", "swwae")


def split_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this tool's keys, the rest for the suite config)."""
    own, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in INVERT_KEYS:
            own[key] = value
        else:
            rest.append(arg)
    return own, rest


def pair_of(method: str) -> list[str]:
    """``swwae_first`` -> ``["sae_first", "swwae_first"]`` (SAE first, as in the paper)."""
    kind, _, placement = method.partition("_")
    if kind not in KINDS or not placement:
        raise unknown("method to invert (a decoding pathway)", method, _decoding_methods())
    get_method(method)
    return [f"{k}_{placement}" for k in KINDS]


def _decoding_methods() -> list[str]:
    from harness.method import available_methods

    return [m for m in available_methods() if m.partition("_")[0] in KINDS]


def _int(own: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(own.get(key, default))
    except ValueError:
        raise UsageError(f"{key} must be an integer, got {own[key]!r}") from None
    if value < 1:
        raise UsageError(f"{key} must be >= 1, got {value}")
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


def layer_names(depth: int) -> list[str]:
    """Layer numbers 1..depth+3 as the paper counts them: pool1..pool<depth>, fc6, fc7, fc8."""
    return [f"pool{i}" for i in range(1, depth + 1)] + ["fc6", "fc7", "fc8"]


def _crops(cfg: DictConfig, dataset, part: str, indices: np.ndarray, batch: int):
    """Normalized center crops of ``dataset.<part>`` (train or val) on the CPU."""
    images = dataset.train if part == "train" else dataset.val
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    return center_crop_batches(images, indices, batch, cfg.data.resize, cfg.data.crop, mean, std)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image target, its reconstruction from ``layer``): a macro-layer's pooled code
    through the top-down decoder, or an fc code through the fc decoder and then it."""
    enc = model.encode(x)
    target = model.targets(x, enc)[0]
    depth = len(model.decoder.layers)
    if layer <= depth:
        return target, model.decoder.topdown(enc, start=layer)[0]
    codes = fc_codes(model.encoder.classifier, enc.pooled[-1])
    top = fc(codes[layer - depth - 1], start=layer - depth - 1)[-1]
    return target, model.decoder.topdown(enc, code=top)[0]


@torch.no_grad()
def invert(
    cfg: DictConfig,
    models: dict[str, torch.nn.Module],
    fcs: dict[str, FcDecoder | None],
    layer: int,
    rows: int,
) -> tuple[list[list[torch.Tensor]], pd.DataFrame]:
    """Picture rows (original, then each model's reconstructions from layers 1..layer)
    and the relative error of every (model, layer) over the val set."""
    dataset = load_dataset(cfg.data)
    names = layer_names(len(next(iter(models.values())).decoder.layers))
    error = {(name, level): 0.0 for name in models for level in range(1, layer + 1)}
    energy = 0.0
    picture: list[list[torch.Tensor]] = []
    val = np.arange(len(dataset.val))
    for x in _crops(cfg, dataset, "val", val, cfg.eval.batch_size):
        columns: list[torch.Tensor] = []
        for name, model in models.items():
            for level in range(1, layer + 1):
                target, image = reconstruct(model, fcs[name], x, level)
                if not columns:
                    energy += target.pow(2).sum().item()
                    columns.append(model.to_pixels(target[:rows]))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        own, rest = split_argv(argv)
        if "method" not in own:
            raise UsageError("method= is required: one of " + ", ".join(_decoding_methods()))
        names = pair_of(own["method"])
        cfg = load_config([*rest, f"methods=[{','.join(names)}]"])
        dataset = load_dataset(cfg.data)
        encoder = build_encoder(
            cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop
        )
        depth = len(encoder.macro_specs())
        layer = _int(own, "layer", depth)
        if layer > depth + 3:
            raise UsageError(
                f"layer={layer}, but model {cfg.model.name!r} has layers 1..{depth + 3} "
                f"({', '.join(layer_names(depth))})"
            )
        rows = _int(own, "images", 8)
        fc_steps = _int(own, "fc_steps", 500)
        plan = make_plan(cfg)
        models = load_models(cfg, names, plan)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    fcs = {
        name: train_fc_decoder(cfg, model, fc_steps) if layer > depth else None
        for name, model in models.items()
    }
    picture, table = invert(cfg, models, fcs, layer, rows)
    out = Path(cfg.results) / cfg.suite / "invert"
    budget, seed = first_run_of(cfg, plan)
    stem = f"{own['method']}-labels{budget}-seed{seed}-layer{layer}"
    save_grid(picture, out / f"{stem}.png")
    atomic_write_text(out / f"{stem}.json", table.to_json(orient="records", indent=2) + "\n")
    wide = table.pivot(index=["layer", "name"], columns="method", values="relative_error")
    print(f"relative reconstruction error of the val images from each layer ({cfg.suite}):\n")
    print(wide.reset_index().to_markdown(index=False, floatfmt=".4f"))
    layers = layer_names(depth)[:layer]
    columns = ["original"] + [f"{n} from {layers[i]}" for n in names for i in range(layer)]
    print(f"\npicture: {out / stem}.png (columns: {', '.join(columns)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
