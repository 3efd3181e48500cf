"""The one interface the training loop reads activations through.

Any source of aligned activation rows implements it: model forwards through a shuffle buffer
(``saes.activations.model_stream.ModelActivationStream``) today; an on-disk cache or rows received
from other ranks tomorrow. The loop never asks where rows come from.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

Activations = dict[str, torch.Tensor]
"""Aligned activation rows: ``{hook: [N, D_hook]}``, the same N rows (token positions) per hook."""


@runtime_checkable
class ActivationStream(Protocol):
    """Batches of ``{hook: [batch_size, D]}`` raw activations, resumable through ``state_dict``."""

    def next_batch(self) -> Activations | None:
        """The next training batch, or None once the source is drained."""

    def sample(self, rows: int, seed: int) -> Activations:
        """Up to ``rows`` rows drawn with ``seed`` without consuming any (for the normalization
        scale and the ``b_dec`` initialisation before the first step)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with exactly the same batches."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict``."""

    def close(self) -> None:
        """Release background work (threads, files); the state is unaffected."""
