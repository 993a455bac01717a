"""The Ladder's training step: the harness's against a bare PyTorch loop, side by side.

One process, one real MNIST batch (100 labeled + 100 unlabeled, ``suites/mnist_ladder``),
the same model (``ladder_mlp`` and the full Ladder's decoder, built once per side from
the same seed) and the same optimizer (Adam, lr 0.002). The harness side takes the
trainer's own step (``harness.engine.loop.train_one_epoch`` with the method's
``loss``: non-finite check, scheduler, per-step logging); the bare side is a
plain loop whose loss is written out inline with torch ops (the same three passes
and seven denoising costs, no method or trainer in between). The two alternate
round by round; the median step time of each is reported. Goal: harness / bare
<= 1.05.

    python benchmarks/bench_ladder_step.py [--threads 1 2] [--rounds 7] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.config import load_config  # noqa: E402
from harness.data import center_crop, load_dataset, normalize  # noqa: E402
from harness.engine.loop import make_optimizer, make_scheduler, train_one_epoch  # noqa: E402
from harness.method import Batch, get_method  # noqa: E402
from harness.models import build_encoder  # noqa: E402

EPS = 1e-10


def real_batch(cfg) -> Batch:
    dataset = load_dataset(cfg.data)
    n, m = cfg.optim.batch_size, cfg.optim.unlabeled_batch_size
    images = center_crop(dataset.train.images[: n + m], cfg.data.crop)
    x = normalize(images, torch.tensor(dataset.mean), torch.tensor(dataset.std))
    y = torch.from_numpy(dataset.train.targets[:n])
    return Batch(x=x[:n], y=y, u=[x[n:]])


def build(cfg):
    dataset = load_dataset(cfg.data)
    method = get_method("ladder")(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    model = method.build_model(encoder, dataset)
    model.train()
    return method, model


def bare_loss(model, batch: Batch, weights: list[float], noise: float) -> torch.Tensor:
    """The full Ladder's loss written out with torch ops on the model's parameters."""
    layers = list(model.encoder.classifier)
    mean_px, std_px = model.encoder.features.mean, model.encoder.features.std

    def encode(x, input_noise, layer_noise, track):
        h = torch.flatten(x * std_px[:, None, None] + mean_px[:, None, None], 1)
        if input_noise:
            h = h + input_noise * torch.randn_like(h)
        zs, means, stds = [h], [None], [None]
        for layer in layers:
            z_pre = h @ layer.op.weight.t()
            mean, var = z_pre.mean(0), z_pre.var(0, unbiased=False)
            if track:
                with torch.no_grad():
                    n = z_pre.shape[0]
                    layer.running_mean.lerp_(mean, 0.1)
                    layer.running_var.lerp_(var * n / (n - 1), 0.1)
            std = torch.sqrt(var + EPS)
            z = (z_pre - mean) / std
            if layer_noise:
                z = z + layer_noise * torch.randn_like(z)
            zs.append(z)
            means.append(mean)
            stds.append(std)
            h = (z + layer.beta) * layer.gamma if layer.top else torch.relu(z + layer.beta)
        return zs, means, stds, h

    def bn(u):
        return (u - u.mean(0)) / torch.sqrt(u.var(0, unbiased=False) + EPS)

    logits = encode(batch.x, 0.3, noise, False)[3]
    with torch.no_grad():
        encode(batch.x, 0.0, 0.0, True)
    loss = F.cross_entropy(logits, batch.y)
    z_noisy, _, _, top = encode(batch.u[0], 0.3, noise, False)
    z_clean, means, stds, _ = encode(batch.u[0], 0.0, 0.0, False)
    decoder = model.decoder
    u = bn(torch.softmax(top, 1))
    estimate = None
    for layer in range(len(layers), -1, -1):
        if layer < len(layers):
            u = bn(estimate @ decoder.vertical[layer].weight.t())
        a = decoder.combinators[layer].a
        mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
        v = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
        estimate = (z_noisy[layer] - mu) * v + mu
        target_space = estimate if means[layer] is None else (estimate - means[layer]) / stds[layer]
        loss = loss + weights[layer] * F.mse_loss(target_space, z_clean[layer])
    return loss


def harness_steps(state, batch: Batch, steps: int) -> float:
    method, model, optimizer, scheduler = state
    stage = method.stages()[0]
    tic = time.perf_counter()
    train_one_epoch(
        model, method, stage, optimizer, scheduler, [batch] * steps, amp=False, grad_clip=0.0
    )
    return (time.perf_counter() - tic) / steps


def bare_steps(state, batch: Batch, steps: int, weights: list[float], noise: float) -> float:
    model, optimizer = state
    tic = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        bare_loss(model, batch, weights, noise).backward()
        optimizer.step()
    return (time.perf_counter() - tic) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    cfg = load_config(["suite=mnist_ladder"])
    batch = real_batch(cfg)
    weights = [float(w) for w in cfg.ladder.weights]
    noise = float(cfg.ladder.noise)
    print(
        f"\nmnist_ladder: ladder_mlp {build(cfg)[1].encoder.widths}, full Ladder, batch "
        f"{cfg.optim.batch_size} labeled + {cfg.optim.unlabeled_batch_size} unlabeled, Adam; "
        f"median of {args.rounds} rounds x {args.steps} steps\n"
    )
    method, model = build(cfg)  # both sides compute the same loss (same draws, same order)
    torch.manual_seed(5)
    ours_loss = sum(method.loss(model, method.stages()[0], batch).values()).item()
    _, model = build(cfg)
    torch.manual_seed(5)
    bare_value = bare_loss(model, batch, weights, noise).item()
    assert abs(ours_loss - bare_value) <= 1e-4 * abs(bare_value), (ours_loss, bare_value)
    print(f"one step's loss: harness {ours_loss:.6f}, bare {bare_value:.6f}\n")
    print("| threads | harness ms/step | bare ms/step | harness / bare |")
    print("|--:|--:|--:|--:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        method, model = build(cfg)
        optimizer = make_optimizer(cfg, model.parameters(), 0.002)
        scheduler = make_scheduler(cfg, optimizer, 10**9)
        ours = (method, model, optimizer, scheduler)
        _, bare_model = build(cfg)
        bare = (bare_model, make_optimizer(cfg, bare_model.parameters(), 0.002))
        harness_steps(ours, batch, 3)  # warm-up
        bare_steps(bare, batch, 3, weights, noise)
        times: dict[str, list[float]] = {"harness": [], "bare": []}
        for _ in range(args.rounds):
            times["harness"].append(harness_steps(ours, batch, args.steps))
            times["bare"].append(bare_steps(bare, batch, args.steps, weights, noise))
        h, b = (statistics.median(times[k]) for k in ("harness", "bare"))
        print(f"| {threads} | {1000 * h:.1f} | {1000 * b:.1f} | {h / b:.3f} |")


if __name__ == "__main__":
    main()
