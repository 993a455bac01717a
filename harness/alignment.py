"""Distribution alignment (Berthelot et al. 2020, ReMixMatch §3.2): the unlabeled
batch's class probabilities multiplied by p_target / p_model and renormalized, where
p_model is a running mean of the model's predictions on unlabeled images. SoftMatch
uses it with a uniform target; ReMixMatch, AdaMatch, CoMatch and SimMatch with the
labeled data's class distribution. Its state is a method's (``state_dict``), so it is
in every checkpoint and a resumed run aligns as the uninterrupted one.

As USB's ``DistAlignEMAHook`` (semilearn/algorithms/hooks/dist_align.py): p_model
starts at the first batch's mean, then moves as an EMA with ``momentum``; p_target is
uniform, or (``target="labeled"``) an EMA of the labeled batches' predictions from
uniform; 1e-6 keeps an unseen class from dividing by zero.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.engine.distributed import all_rows

TARGETS = ("uniform", "labeled")


def reweighted(
    probs: torch.Tensor, p_target: torch.Tensor | float, p_model: torch.Tensor
) -> torch.Tensor:
    """``probs`` times (p_target + 1e-6) / (p_model + 1e-6), renormalized per row."""
    aligned = probs.float() * (p_target + 1e-6) / (p_model + 1e-6)
    return aligned / aligned.sum(dim=-1, keepdim=True)


class DistributionAlignment:
    """p_target / p_model reweighting of class probabilities, with its running state."""

    def __init__(self, num_classes: int, momentum: float, target: str = "uniform"):
        if target not in TARGETS:
            raise ValueError(f"unknown alignment target {target!r}; valid: {', '.join(TARGETS)}")
        self.momentum = momentum
        self.target = target
        self.p_target = torch.full((num_classes,), 1.0 / num_classes)
        self.p_model: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(
        self, probs_unlabeled: torch.Tensor, probs_labeled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update the running means with this step's batches (all ranks' rows), then
        return ``probs_unlabeled`` aligned."""
        unlabeled = all_rows(probs_unlabeled.detach().float())
        self.p_target = self.p_target.to(unlabeled.device)
        mean = unlabeled.mean(dim=0)
        if self.p_model is None:
            self.p_model = mean
        else:
            self.p_model = self.p_model.to(mean.device) * self.momentum + mean * (1 - self.momentum)
        if self.target == "labeled":
            if probs_labeled is None:
                raise ValueError("alignment to the labeled distribution needs its probabilities")
            labeled = all_rows(probs_labeled.detach().float()).mean(dim=0)
            self.p_target = self.p_target * self.momentum + labeled * (1 - self.momentum)
        return reweighted(probs_unlabeled, self.p_target, self.p_model)

    def state_dict(self) -> dict[str, Any]:
        model = None if self.p_model is None else self.p_model.cpu()
        return {"p_model": model, "p_target": self.p_target.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_model, self.p_target = state["p_model"], state["p_target"]


class QueueAlignment:
    """Distribution alignment to a uniform target with p_model the mean of the last
    ``length`` batches' mean predictions: USB's ``DistAlignQueueHook``
    (semilearn/algorithms/hooks/dist_align.py), which SimMatch and CoMatch use. As
    there, the queue starts as ``length`` rows of zeros and p_model is the mean over
    every row, filled or not (before the queue is full that scales every class alike,
    which the renormalization undoes, up to the 1e-6)."""

    def __init__(self, num_classes: int, length: int):
        self.p_model = torch.zeros(length, num_classes)
        self.pointer = 0

    @torch.no_grad()
    def __call__(self, probs_unlabeled: torch.Tensor) -> torch.Tensor:
        """Put this step's mean prediction (all ranks' rows) in the queue, then return
        ``probs_unlabeled`` aligned."""
        unlabeled = all_rows(probs_unlabeled.detach().float())
        self.p_model = self.p_model.to(unlabeled.device)
        self.p_model[self.pointer] = unlabeled.mean(dim=0)
        self.pointer = (self.pointer + 1) % len(self.p_model)
        return reweighted(probs_unlabeled, 1.0 / self.p_model.shape[1], self.p_model.mean(dim=0))

    def state_dict(self) -> dict[str, Any]:
        return {"p_model": self.p_model.cpu().clone(), "pointer": self.pointer}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QueueAlignment:
        alignment = cls(*state["p_model"].shape[::-1])
        alignment.p_model, alignment.pointer = state["p_model"], int(state["pointer"])
        return alignment
