"""K-sparse encoder/decoder ops whose backward touches only the K active latents per token.

``topk_encode`` has the same values and gradients as ``relu(topk(x_c @ W_enc + b_enc))`` under
autograd, but its backward costs O(B*K*D) instead of two dense O(B*F*D) matmuls: the gradient of
the pre-activations is K-sparse, so the encoder weight gradient is a scatter-add of K rows per
token, and b_dec's gradient is ``-W_enc @ grad(b_enc)`` (exact when the input needs no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, b_dec_D, k: int):  # type: ignore[override]
        x_c_BD = x_BD - b_dec_D if b_dec_D is not None else x_BD
        pre_BF = torch.addmm(b_enc_F, x_c_BD, W_enc_DF)
        vals_BK, idx_BK = pre_BF.topk(k, dim=1, sorted=False)
        vals_BK = vals_BK.clamp_min_(0)
        ctx.save_for_backward(x_c_BD, W_enc_DF, idx_BK, vals_BK)
        ctx.has_b_dec = b_dec_D is not None
        ctx.mark_non_differentiable(idx_BK)
        return vals_BK, idx_BK

    @staticmethod
    def backward(ctx, grad_vals_BK, _grad_idx):  # type: ignore[override]
        x_c_BD, W_enc_DF, idx_BK, vals_BK = ctx.saved_tensors
        d_in, d_sae = W_enc_DF.shape
        g_BK = grad_vals_BK * (vals_BK > 0)
        flat_idx = idx_BK.reshape(-1)
        grad_b_enc_F = torch.zeros(d_sae, dtype=g_BK.dtype, device=g_BK.device)
        grad_b_enc_F.index_add_(0, flat_idx, g_BK.reshape(-1))
        rows_ND = (g_BK.unsqueeze(-1) * x_c_BD.unsqueeze(1)).reshape(-1, d_in)
        grad_W_enc_FD = torch.zeros(d_sae, d_in, dtype=rows_ND.dtype, device=rows_ND.device)
        grad_W_enc_FD.index_add_(0, flat_idx, rows_ND)
        grad_b_dec_D = -(W_enc_DF @ grad_b_enc_F) if ctx.has_b_dec else None
        return None, grad_W_enc_FD.T, grad_b_enc_F, grad_b_dec_D, None


def topk_encode(
    x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, b_dec_D: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vals_BK, idx_BK)`` of ``relu(topk((x - b_dec) @ W_enc + b_enc, k))``; ``x_BD`` must not
    require grad. Pass ``b_dec_D=None`` to skip the input centering (transcoders)."""
    if x_BD.requires_grad:
        raise ValueError("topk_encode computes no gradient for its input; detach x_BD")
    return _TopKEncode.apply(x_BD, W_enc_DF, b_enc_F, b_dec_D, k)


def sparse_decode(idx_BK: torch.Tensor, vals_BK: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> torch.Tensor:
    """``sum_k vals[b, k] * W_dec[idx[b, k]] + b_dec`` as ``[B, D]`` without a dense ``[B, F]``."""
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=vals_BK, mode="sum") + b_dec_D
