"""K-sparse encoder/decoder ops whose backward touches only the active latents.

``topk_encode`` has the same values and gradients as ``relu(topk(x_c @ W_enc + b_enc))`` under
autograd, but its backward costs O(B*K*D) instead of two dense O(B*F*D) matmuls: the gradient of
the pre-activations is K-sparse, so the encoder weight gradient is a scatter-add of K rows per
token, and b_dec's gradient is ``-W_enc @ grad(b_enc)`` (exact when the input needs no gradient).
``batch_topk_encode`` does the same for the ``n`` largest pre-activations of a whole batch
(BatchTopK), returning ragged ``(rows, cols, vals)`` triples sorted by row for ``ragged_decode``.
Under autocast the encoder matmul runs in the autocast dtype; values are returned in the input's.
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
        vals_BK = vals_BK.to(x_BD.dtype).clamp_min_(0)  # bf16 under autocast -> the input's dtype
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


class _GatherEncode(torch.autograd.Function):
    """``vals_N = relu(pre[rows_N, cols_N])`` for pre-activations computed outside autograd; the
    backward scatters into the N selected (token, latent) pairs only."""

    @staticmethod
    def forward(ctx, x_c_BD, W_enc_DF, b_enc_F, b_dec_D, rows_N, cols_N, vals_N):  # type: ignore[override]
        ctx.save_for_backward(x_c_BD, W_enc_DF, rows_N, cols_N, vals_N)
        ctx.has_b_dec = b_dec_D is not None
        return vals_N.clone()

    @staticmethod
    def backward(ctx, grad_N):  # type: ignore[override]
        x_c_BD, W_enc_DF, rows_N, cols_N, vals_N = ctx.saved_tensors
        d_in, d_sae = W_enc_DF.shape
        g_N = (grad_N * (vals_N > 0)).to(W_enc_DF.dtype)
        grad_b_enc_F = torch.zeros(d_sae, dtype=g_N.dtype, device=g_N.device).index_add_(0, cols_N, g_N)
        rows_ND = g_N[:, None] * x_c_BD[rows_N].to(g_N.dtype)
        grad_W_enc_FD = torch.zeros(d_sae, d_in, dtype=g_N.dtype, device=g_N.device).index_add_(0, cols_N, rows_ND)
        grad_b_dec_D = -(W_enc_DF @ grad_b_enc_F) if ctx.has_b_dec else None
        return None, grad_W_enc_FD.T, grad_b_enc_F, grad_b_dec_D, None, None, None


def batch_topk_encode(
    x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, b_dec_D: torch.Tensor | None, n_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows_N, cols_N, vals_N)``: the ``n_keep`` largest pre-activations of the whole batch
    (ReLU applied), sorted by row; gradients flow to the encoder through the selected entries
    only. ``x_BD`` must not require grad; ``b_dec_D=None`` skips input centering."""
    if x_BD.requires_grad:
        raise ValueError("batch_topk_encode computes no gradient for its input; detach x_BD")
    d_sae = W_enc_DF.shape[1]
    with torch.no_grad():
        x_c_BD = x_BD - b_dec_D if b_dec_D is not None else x_BD
        pre_BF = torch.addmm(b_enc_F, x_c_BD, W_enc_DF)
        vals_N, flat_N = pre_BF.view(-1).topk(min(n_keep, pre_BF.numel()), sorted=False)
        flat_N, order = flat_N.sort()
        vals_N = vals_N[order].to(x_BD.dtype).clamp_min_(0)
    rows_N, cols_N = flat_N // d_sae, flat_N % d_sae
    vals_N = _GatherEncode.apply(x_c_BD, W_enc_DF, b_enc_F, b_dec_D, rows_N, cols_N, vals_N)
    return rows_N, cols_N, vals_N


def ragged_decode(
    rows_N: torch.Tensor, cols_N: torch.Tensor, vals_N: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """``[n_rows, D]``: ``b_dec + sum vals * W_dec[cols]`` per row, for entries sorted by row."""
    offsets_B = torch.searchsorted(rows_N, torch.arange(n_rows, device=rows_N.device))
    out = F.embedding_bag(cols_N, W_dec_FD, offsets_B, mode="sum", per_sample_weights=vals_N.to(W_dec_FD.dtype))
    return out + b_dec_D
