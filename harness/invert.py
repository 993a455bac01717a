"""``python -m harness.invert suite=NAME method=swwae_first [layer=L] [key=value ...]``

Network inversion pictures from stored runs: val images beside their
reconstructions from each macro-layer 1..L (the top-down decoder started at
that layer's pooled code), for the method asked for and its counterpart with
the other unpooling (SAE beside SWWAE, same loss placement), plus the
per-layer relative reconstruction error over the whole val set as numbers.

The runs are those of the suite's first label budget and first seed (set
``labels=`` / ``seeds=`` to choose); they must be done (``python -m harness.run``
with the same settings). Writes ``<results>/<suite>/invert/<name>.png`` and
``.json``, and prints the error table. Extra keys: ``method`` (required),
``layer`` (deepest macro-layer shown; default all), ``images`` (rows; default 8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from harness.config import load_config
from harness.data import center_crop, epoch_batches, load_batches, load_dataset, normalize
from harness.errors import UsageError, unknown
from harness.images import save_grid
from harness.method import get_method
from harness.models import build_encoder
from harness.plan import make_plan
from harness.store import atomic_write_text, run_record

INVERT_KEYS = ("method", "layer", "images")
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


def first_run_of(cfg: DictConfig) -> tuple[str, int]:
    """(label budget, seed) of the runs shown: the suite's first of each."""
    return make_plan(cfg)[0].labels, cfg.seeds[0]


def load_models(cfg: DictConfig, names: list[str]) -> dict[str, torch.nn.Module]:
    """The final weights of each named method's run (first budget, first seed)."""
    dataset = load_dataset(cfg.data)
    plan = make_plan(cfg)
    budget, seed = first_run_of(cfg)
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
        last_stage = get_method(name)(cfg).stages()[-1].name
        encoder = build_encoder(
            cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop
        )
        model = get_method(name)(cfg).build_model(encoder, dataset)
        model.load_state_dict(torch.load(record.stage_file(last_stage), map_location="cpu"))
        models[name] = model.eval()
    return models


@torch.no_grad()
def invert(
    cfg: DictConfig, models: dict[str, torch.nn.Module], layer: int, rows: int
) -> tuple[list[list[torch.Tensor]], pd.DataFrame]:
    """Picture rows (original, then each model's reconstructions from layers 1..layer)
    and the relative error of every (model, layer) over the val set."""
    dataset = load_dataset(cfg.data)
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    batches = epoch_batches(np.arange(len(dataset.val)), cfg.eval.batch_size, shuffle=False)
    error = {(name, level): 0.0 for name in models for level in range(1, layer + 1)}
    energy = 0.0
    picture: list[list[torch.Tensor]] = []
    for images, _ in load_batches(dataset.val, batches, cfg.data.resize):
        x = normalize(center_crop(images, cfg.data.crop), mean, std)
        columns: list[torch.Tensor] = []
        for name, model in models.items():
            enc = model.encode(x)
            target = model.targets(x, enc)[0]
            if not columns:
                energy += target.pow(2).sum().item()
                columns.append(model.to_pixels(target[:rows]))
            for level in range(1, layer + 1):
                image = model.decoder.topdown(enc, start=level)[0]
                error[name, level] += (image - target).pow(2).sum().item()
                columns.append(model.to_pixels(image[:rows]))
        if not picture:
            picture = [[column[i] for column in columns] for i in range(len(columns[0]))]
    table = pd.DataFrame(
        [
            {"method": name, "layer": level, "relative_error": value / energy}
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
        if layer > depth:
            raise UsageError(
                f"layer={layer}, but model {cfg.model.name!r} has macro-layers 1..{depth}"
            )
        rows = _int(own, "images", 8)
        models = load_models(cfg, names)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    picture, table = invert(cfg, models, layer, rows)
    out = Path(cfg.results) / cfg.suite / "invert"
    budget, seed = first_run_of(cfg)
    stem = f"{own['method']}-labels{budget}-seed{seed}-layer{layer}"
    save_grid(picture, out / f"{stem}.png")
    atomic_write_text(out / f"{stem}.json", table.to_json(orient="records", indent=2) + "\n")
    wide = table.pivot(index="layer", columns="method", values="relative_error")
    print(f"relative reconstruction error of the val images from each layer ({cfg.suite}):\n")
    print(wide.to_markdown(floatfmt=".4f"))
    columns = ["original"] + [f"{n} from layer {i}" for n in names for i in range(1, layer + 1)]
    print(f"\npicture: {out / stem}.png (columns: {', '.join(columns)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
