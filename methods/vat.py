"""Virtual adversarial training (Miyato, Maeda, Koyama & Ishii 2018, "Virtual
adversarial training: a regularization method for supervised and semi-supervised
learning", TPAMI).

The local distributional smoothness cost: for each unlabeled image u, the direction
r of norm ε (per image, L2) that most changes the network's output distribution,
found by ``iterations`` steps of power iteration from a random direction scaled by
ξ (section 3.3), and then KL(p(·|u) ‖ p(·|u + r)) with p(·|u) held fixed:

    loss = CE(labeled) + α · mean KL(p(u) ‖ p(u + r_adv))  [+ mean entropy of p(u)]

The entropy term is the paper's "VAT+EntMin" (section 4.1.2). The perturbation is
computed in fp32 even where the step runs in bf16 (``full_precision``): the power
iteration differentiates a KL divergence between two outputs ξ apart, far below
bf16's resolution. ε is in the units of the network's input (images standardized by
the dataset's mean and std), where the paper's are those of its own preprocessing.
Batch-norm running statistics are updated by the labeled pass only, as in the
reference code: the unlabeled and perturbed passes leave them as they were. The
clean, probing and perturbed passes of the unlabeled batch draw the same dropout
masks (the reference code gives them one seed): with masks of their own, the
difference between p(u) and p(u + ξd) is dropout's, not ξd's, so the power
iteration would follow dropout noise and the cost would penalise it (on
``vgg_small_2``, whose fc layers drop half their units, MNIST at 100 labels went
from 8.6% to 12.2% val error over training that way).

Defaults (``vat`` section, takerum/vat_tf unless said): ``xi`` = 1e-6,
``iterations`` = 1 (one power iteration suffices, section 3.3), ``weight`` = 1.0 (α),
``entropy`` = false (``true`` is the code's "vatent", weight 1); ``epsilon`` = 1.0:
the MNIST reference code (takerum/vat, Theano) uses ε = 0.3 at 100 labels on pixels
in [0, 1], which on MNIST's standardized pixels (std 0.31) is about 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_positive, check_weight, register_settings
from harness.method import Batch, Method, Stage, full_precision, register_method
from harness.seeding import rng_state, set_rng_state
from methods._common import batch_norm_stats_kept, labeled_cost


@register_settings("vat")
@dataclass
class VATSettings:
    epsilon: float = 1.0  # ε, the adversarial perturbation's L2 norm (input units)
    xi: float = 1e-6  # ξ, the finite-difference step of the power iteration
    iterations: int = 1  # power iterations per step
    weight: float = 1.0  # α, the VAT term's weight
    entropy: bool = False  # add the entropy-minimization term (VAT+EntMin)

    def __post_init__(self) -> None:
        check_positive("vat.epsilon", self.epsilon)
        check_positive("vat.xi", self.xi)
        check_positive("vat.iterations", self.iterations, integer=True)
        check_weight("vat.weight", self.weight)


def _norms(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))


def _unit(d: torch.Tensor) -> torch.Tensor:
    """Each image's direction scaled to L2 norm 1 (an all-zero one stays 0)."""
    return d / _norms(d).clamp_min(torch.finfo(d.dtype).tiny)


def _kl(p_log: torch.Tensor, q_scores: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per batch mean, p given as log-probabilities."""
    return F.kl_div(F.log_softmax(q_scores, dim=1), p_log, log_target=True, reduction="batchmean")


def adversarial_direction(
    network: nn.Module,
    images: torch.Tensor,
    p_log: torch.Tensor,
    xi: float,
    iterations: int,
    noise: dict[str, Any] | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unit direction (per image) that most increases KL(p ‖ p(· | images + ξ d)),
    by power iteration from ``start`` (default: a Gaussian from the global RNG,
    seeded per epoch); before each probing pass the generators are set back to
    ``noise`` (``harness.seeding.rng_state`` taken before the clean pass, so the
    same dropout masks) where given.

    The gradient at ξ d is about ξ H d (H: the KL's Hessian at 0); for a network that is
    still nearly flat in its input (an untrained one) it can round to exactly 0 in fp32.
    Such an image keeps its previous direction, so every perturbation has norm ε."""
    d = _unit(torch.randn_like(images) if start is None else start)
    for _ in range(iterations):
        if noise is not None:
            set_rng_state(noise)
        probe = (xi * d).requires_grad_(True)
        divergence = _kl(p_log, network(images + probe).float())
        (grad,) = torch.autograd.grad(divergence, probe)
        d = torch.where(_norms(grad) > 0, _unit(grad.detach()), d)
    return d


@register_method("vat")
class VAT(Method):
    config_sections = ("vat",)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        settings = self.cfg.vat
        terms = labeled_cost(model, batch)
        if not batch.u:
            return terms
        with full_precision(batch.u[0].device.type), batch_norm_stats_kept(model):
            u = batch.u[0].float()
            # the power iteration's start drawn first, then one set of dropout masks for
            # every pass of u: the generators end where the clean pass left them
            start = torch.randn_like(u)
            noise = rng_state(cuda=u.is_cuda)
            with torch.set_grad_enabled(bool(settings.entropy)):  # else only its p is read
                scores = model(u).float()
            p_log = F.log_softmax(scores.detach(), dim=1)
            direction = adversarial_direction(
                model, u, p_log, settings.xi, settings.iterations, noise, start
            )
            r_adv = settings.epsilon * direction
            set_rng_state(noise)
            terms["vat"] = settings.weight * _kl(p_log, model(u + r_adv).float())
            if settings.entropy:
                probs = torch.softmax(scores, dim=1)
                terms["entropy"] = -(probs * F.log_softmax(scores, dim=1)).sum(1).mean()
        self.log_scalar("r_norm", r_adv.flatten(1).norm(dim=1).mean())
        return terms
