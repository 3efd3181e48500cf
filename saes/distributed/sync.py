"""What one trainer's step shares with the other ranks: nothing in one process (``StepSync``),
the batch statistics, gradients, firing masks and buffers under ``distributed=data``
(``DataParallelSync``), the global gradient norm under ``distributed=latents``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` (same norm, same coefficient), except that on CPU the
    gradients are only rescaled when the norm exceeds ``max_norm``: otherwise torch multiplies
    every gradient by a clamped coefficient of 1.0, a full pass over the weights for nothing."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    if params[0].grad.device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    clip_coef = max_norm / (total + 1e-6)
    if clip_coef < 1.0:
        torch._foreach_mul_(grads, clip_coef)


class StepSync:
    """One process: nothing is shared."""

    ranks: int = 1

    @property
    def batch_sum(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Sums a batch statistic over the ranks holding shares of the batch (None: one share)."""
        return None

    def rows(self, local_rows: int) -> int:
        """Rows of the global batch, from this rank's."""
        return local_rows

    def gradients(self, sae: nn.Module) -> None:
        """After backward: make the gradients the global batch's."""

    def fired(self, fired_F: torch.Tensor) -> torch.Tensor:
        """Latents that fired on any rank's share of the batch."""
        return fired_F

    def clip(self, sae: nn.Module, max_norm: float) -> None:
        clip_grad_norm(sae.parameters(), max_norm)

    def after_reset(self, sae: nn.Module) -> None:
        """After a dictionary re-initialised latents from this rank's data (e.g. resampling)."""

    def after_step(self, sae: nn.Module) -> None:
        """After the optimizer step."""


class DataParallelSync(StepSync):
    """``distributed=data``: every rank holds the same dictionary and an equal share of the batch."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.ranks = dist.get_world_size(group)

    @property
    def batch_sum(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._sum

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, group=self.group)
        return t

    def rows(self, local_rows: int) -> int:
        return local_rows * self.ranks

    def gradients(self, sae: nn.Module) -> None:
        """One all-reduce of every gradient, flattened, then divided by the number of ranks."""
        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.group)
        flat /= self.ranks
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def fired(self, fired_F: torch.Tensor) -> torch.Tensor:
        mask = fired_F.to(torch.uint8)
        dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=self.group)
        return mask.bool()

    @torch.no_grad()
    def after_reset(self, sae: nn.Module) -> None:
        """Rank 0's re-initialised weights for every rank (each drew them from its own rows)."""
        for p in sae.parameters():
            dist.broadcast(p.data, 0, group=self.group)

    @torch.no_grad()
    def after_step(self, sae: nn.Module) -> None:
        """Floating buffers (e.g. BatchTopK's threshold, estimated from each share) averaged."""
        for b in sae.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, group=self.group)
                b /= self.ranks


class LatentShardSync(StepSync):
    """``distributed=latents``: the dictionary (a ``LatentShardedSAE``) reduces what crosses
    shards itself; clipping uses the norm of the whole, unsharded gradient."""

    def clip(self, sae: nn.Module, max_norm: float) -> None:
        sae.clip_grad_norm_(max_norm)
