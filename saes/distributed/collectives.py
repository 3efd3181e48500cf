"""Small differentiable collectives for tensors split or replicated over the ranks of a group.

``sum_partials`` and ``grad_summed`` are the two halves of a latent-sharded layer: each rank
holds a partial result of the same quantity (its latents' share of a reconstruction), summed in
the forward with an identity backward; a replicated parameter whose gradient has one part per
shard (``b_dec`` through the encoder input ``x - b_dec``) passes through ``grad_summed``, an
identity forward whose backward sums the gradient over the ranks.

Both assume every rank computes the same loss from the summed result (so the gradient arriving
at each rank is already the full one). ``torch.distributed.nn.all_reduce`` differs: its backward
all-reduces the gradient again, which scales it by the world size here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

Group = Any
"""A ``torch.distributed`` process group, or None for the default (world) group."""


class _SumPartials(torch.autograd.Function):
    """Forward: all-reduce (sum) of per-rank partial results; backward: identity."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Group) -> torch.Tensor:  # type: ignore[override]
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class _GradSummed(torch.autograd.Function):
    """Forward: identity; backward: all-reduce (sum) of the gradient."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        out = grad.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def sum_partials(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """``sum over ranks of t`` (any shape, the same on every rank), differentiable with an identity
    backward: the gradient of each rank's partial is the gradient of the sum. One collective in
    the forward, none in the backward."""
    return _SumPartials.apply(t, group)


def grad_summed(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """``t`` itself (a replicated tensor, any shape), whose gradient is all-reduced (summed) over
    the ranks in the backward: for a parameter used once per shard with a per-shard gradient part.
    One collective in the backward (every rank must reach it: keep the graph alike on all ranks)."""
    return _GradSummed.apply(t, group)


def all_gather_cat(t: torch.Tensor, group: Group = None, dim: int = 0) -> torch.Tensor:
    """No-grad all-gather of an equally shaped tensor from every rank, concatenated along ``dim``
    in rank order: ``[..., world * n, ...]`` from ``[..., n, ...]``."""
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=dim)


def all_reduce_sum(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """No-grad all-reduce (sum) of a copy of ``t`` (any shape)."""
    out = t.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out
