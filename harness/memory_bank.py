"""A memory bank of L2-normalized feature rows, each with a payload: what SimMatch
(a slot per labeled image, holding its label) and CoMatch (a queue of recent images,
holding their class probabilities) compare a batch's embeddings against.

Two ways to write, as the reference code (USB's PyTorch ports:
semilearn/algorithms/simmatch/simmatch.py ``update_bank``,
semilearn/algorithms/comatch/comatch.py ``update_bank``) does:

- ``write(index, features, payload, momentum)``: rows at fixed slots, each moved to
  normalize(momentum · old + (1 - momentum) · new) (momentum 0: replaced);
- ``push(features, payload)``: a first-in first-out queue; a write that would run past
  the end is cut there (the next one starts again at row 0), as USB cuts it.

Every write takes all ranks' rows (``all_rows``), so under DDP the bank moves the same
on every rank, as on one process. Its tensors and pointer are a method's running state
(``state_dict``): in every checkpoint, so a resumed run reads the bank the uninterrupted
one would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.engine.distributed import all_rows


class MemoryBank:
    """``features`` (rows, dim) and ``payload`` (rows, ...), and the queue's pointer."""

    def __init__(self, features: torch.Tensor, payload: torch.Tensor):
        if len(features) != len(payload):
            raise ValueError(f"{len(features)} feature rows but {len(payload)} payload rows")
        self.features = features
        self.payload = payload
        self.pointer = 0

    def __len__(self) -> int:
        return len(self.features)

    def to(self, device: torch.device) -> MemoryBank:
        self.features = self.features.to(device)
        self.payload = self.payload.to(device)
        return self

    @torch.no_grad()
    def write(
        self,
        index: torch.Tensor,
        features: torch.Tensor,
        payload: torch.Tensor,
        momentum: float = 0.0,
    ) -> None:
        """Rows ``index`` (every rank's) take these features, L2-normalized after the
        moving average with their old value, and this payload."""
        index, features, payload = (all_rows(t.detach()) for t in (index, features, payload))
        self.to(features.device)
        mixed = momentum * self.features[index] + (1.0 - momentum) * features.float()
        self.features[index] = F.normalize(mixed, dim=1) if momentum > 0 else features.float()
        self.payload[index] = payload.to(self.payload.dtype)

    @torch.no_grad()
    def push(self, features: torch.Tensor, payload: torch.Tensor) -> None:
        """The next rows of the queue (every rank's), from the pointer on."""
        features, payload = all_rows(features.detach()), all_rows(payload.detach())
        self.to(features.device)
        room = len(self) - self.pointer
        features, payload = features[:room], payload[:room]
        end = self.pointer + len(features)
        self.features[self.pointer : end] = features.float()
        self.payload[self.pointer : end] = payload.to(self.payload.dtype)
        self.pointer = end % len(self)

    def state_dict(self) -> dict[str, Any]:
        """Copies (on CPU ``.cpu()`` is the tensor itself, which later writes would change)."""
        return {
            "features": self.features.cpu().clone(),
            "payload": self.payload.cpu().clone(),
            "pointer": self.pointer,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MemoryBank:
        bank = cls(state["features"], state["payload"])
        bank.pointer = int(state["pointer"])
        return bank
