"""Sparsity penalties and straight-through estimators shared by the penalty-trained variants.

``JumpReLU`` and ``Step`` follow Rajamanoharan et al. 2024 ("Jumping Ahead"): the forward pass is
exact; the backward pass gives the threshold a pseudo-derivative through a rectangle kernel of
width ``bandwidth`` around it (the pre-activations get the ordinary gradient of ``z * H(z - t)``,
and none through ``H`` itself). Shapes: ``z_BF`` pre-activations, ``t_F`` thresholds.
"""

from __future__ import annotations

import torch


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """``z * (z > t)`` with d/dt = -(t / bandwidth) * rect((z - t) / bandwidth)."""

    @staticmethod
    def forward(ctx, z_BF, t_F, bandwidth: float):  # type: ignore[override]
        ctx.save_for_backward(z_BF, t_F)
        ctx.bandwidth = bandwidth
        return z_BF * (z_BF > t_F)

    @staticmethod
    def backward(ctx, g_BF):  # type: ignore[override]
        z_BF, t_F = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_z = g_BF * (z_BF > t_F)
        grad_t = -(t_F / bw) * (_rectangle((z_BF - t_F) / bw) * g_BF).sum(0)
        return grad_z, grad_t, None


class Step(torch.autograd.Function):
    """``H(z - t)`` (1.0 where z > t) with d/dt = -(1 / bandwidth) * rect((z - t) / bandwidth)."""

    @staticmethod
    def forward(ctx, z_BF, t_F, bandwidth: float):  # type: ignore[override]
        ctx.save_for_backward(z_BF, t_F)
        ctx.bandwidth = bandwidth
        return (z_BF > t_F).to(z_BF.dtype)

    @staticmethod
    def backward(ctx, g_BF):  # type: ignore[override]
        z_BF, t_F = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_t = -(1.0 / bw) * (_rectangle((z_BF - t_F) / bw) * g_BF).sum(0)
        return None, grad_t, None


def norm_weighted_penalty(acts_BF: torch.Tensor, dec_norm_F: torch.Tensor, kind: str, tanh_scale: float) -> torch.Tensor:
    """Per-token sparsity penalty ``[B]`` on activations weighted by decoder row norms:
    ``l1``: sum |f| ||W_dec|| (Anthropic, April 2024); ``tanh``: sum tanh(c f ||W_dec||)
    (Anthropic, February 2025)."""
    weighted_BF = acts_BF.abs() * dec_norm_F
    if kind == "tanh":
        weighted_BF = torch.tanh(tanh_scale * weighted_BF)
    return weighted_BF.sum(-1)


def pre_act_penalty(pre_BF: torch.Tensor, threshold_F: torch.Tensor | float, dec_norm_F: torch.Tensor) -> torch.Tensor:
    """Anthropic's pre-activation loss (January 2025), per token ``[B]``:
    sum relu(threshold - pre) ||W_dec||; it pulls latents that never fire back towards firing."""
    return ((threshold_F - pre_BF).relu() * dec_norm_F).sum(-1)
