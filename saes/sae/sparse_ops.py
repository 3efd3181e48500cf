"""Sparse encoder/decoder ops whose backward touches only the selected (token, latent) pairs.

A selection is a list of ``N`` pairs ``(rows_N, cols_N)`` sorted by row, with values ``vals_N``
(TopK: ``k`` per row; BatchTopK: ragged; AuxK: ``k_aux`` per row among a subset of latents).

``encode_selected`` has the values and gradients of ``relu(pre[rows, cols])`` with
``pre = (x - b_dec) @ W_enc + b_enc`` under autograd, but the pre-activations are computed once,
outside autograd (``pre_acts``), and shared by every selection of the step (the TopK selection and
AuxK's). Its backward is a sparse-times-dense product: the encoder weight gradient is
``x_c^T @ G`` with ``G`` holding N non-zeros, the bias gradient a scatter-add, and b_dec's
gradient ``-W_enc @ grad(b_enc)`` (exact when the input needs no gradient).
``decode_selected`` is ``sum vals * W_dec[cols]`` per row, with the backward computed the same
way (no per-sample sorting, no ``[N, D]`` buffers beyond a bounded chunk).

Each product picks its kernel by density: a selection filling at least ``DENSE_FRACTION`` of its
``[rows, latents]`` block (e.g. AuxK over the dead latents) runs as a dense matmul of that
block; sparser ones run ``embedding_bag`` and, on CPU, CSR ``torch.sparse.mm`` and
``sampled_addmm`` (COO ``torch.sparse.mm`` and chunked row gathers elsewhere). All give the same
values up to float rounding (tests/sae/test_fast_paths.py pins each to a dense reference).
Under autocast the encoder matmul and top-k run in the autocast dtype; values are returned in the
input's dtype and gradients are computed in float32 (the weights' dtype).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

DENSE_FRACTION = 1 / 16
"""Selections denser than this (non-zeros / block size) use dense matmuls."""
CPU_CSR_KERNELS = True
"""On CPU, sparse products run on CSR tensors (``sampled_addmm`` for ``sddmm``, a transposed CSR
for ``spmm_t``); elsewhere (or when False) COO ``torch.sparse.mm`` and chunked row gathers."""
GATHER_BYTES = 32 * 2**20
"""Row gathers are done in chunks of at most this many bytes."""


def _is_dense(n_nonzero: int, n_rows: int, n_cols: int) -> bool:
    return n_nonzero >= DENSE_FRACTION * n_rows * n_cols


def _densify(rows_N, cols_N, vals_N, n_rows: int, n_cols: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(n_rows, n_cols, dtype=dtype, device=vals_N.device).index_put_((rows_N, cols_N), vals_N.to(dtype))


def spmm_t(rows_N, cols_N, vals_N, rhs_RD: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``S^T @ rhs`` ``[n_cols, D]`` for ``S [R, n_cols]`` with the given non-zeros."""
    n_rows = rhs_RD.shape[0]
    if _is_dense(vals_N.numel(), n_rows, n_cols):
        return _densify(rows_N, cols_N, vals_N, n_rows, n_cols, rhs_RD.dtype).T @ rhs_RD
    if rhs_RD.device.type == "cpu" and CPU_CSR_KERNELS:  # CSR of S (rows sorted), transposed: no sort, one output pass
        S = _csr(rows_N, cols_N, vals_N.to(rhs_RD.dtype), n_rows, n_cols)
        return torch.sparse.mm(S.t(), rhs_RD)
    S = torch.sparse_coo_tensor(torch.stack([cols_N, rows_N]), vals_N.to(rhs_RD.dtype), (n_cols, n_rows),
                                check_invariants=False)
    return torch.sparse.mm(S, rhs_RD)


def spmm(rows_N, cols_N, vals_N, W_CD: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``S @ W`` ``[n_rows, D]`` for ``S [n_rows, C]`` with the given non-zeros (rows sorted)."""
    if _is_dense(vals_N.numel(), n_rows, W_CD.shape[0]):
        return _densify(rows_N, cols_N, vals_N, n_rows, W_CD.shape[0], W_CD.dtype) @ W_CD
    offsets = _row_offsets(rows_N, n_rows)[:-1]
    return F.embedding_bag(cols_N, W_CD, offsets, mode="sum", per_sample_weights=vals_N.to(W_CD.dtype))


def _row_offsets(rows_N: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows + 1]`` CSR row pointers of entries sorted by row."""
    counts = torch.bincount(rows_N, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _csr(rows_N, cols_N, vals_N, n_rows: int, n_cols: int) -> torch.Tensor:
    """``[n_rows, n_cols]`` CSR tensor of entries sorted by row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(_row_offsets(rows_N, n_rows), cols_N, vals_N, (n_rows, n_cols), check_invariants=False)


def sddmm(rows_N, cols_N, A_RD: torch.Tensor, W_CD: torch.Tensor) -> torch.Tensor:
    """``<A[rows], W[cols]>`` for every pair, ``[N]`` (rows sorted)."""
    n_rows, n_cols = A_RD.shape[0], W_CD.shape[0]
    if _is_dense(rows_N.numel(), n_rows, n_cols):
        return (A_RD @ W_CD.T).view(-1).take(rows_N * n_cols + cols_N)
    if A_RD.device.type == "cpu" and CPU_CSR_KERNELS:  # far faster than the dense product at k << d_sae
        S = _csr(rows_N, cols_N, A_RD.new_zeros(rows_N.numel()), n_rows, n_cols)
        return torch.sparse.sampled_addmm(S, A_RD, W_CD.T, beta=0.0).values()
    out = torch.empty(rows_N.numel(), dtype=torch.result_type(A_RD, W_CD), device=A_RD.device)
    chunk_bytes = GATHER_BYTES if A_RD.device.type == "cpu" else 16 * GATHER_BYTES  # fewer launches on GPU
    step = max(1, chunk_bytes // (W_CD.shape[1] * W_CD.element_size()))
    for i in range(0, rows_N.numel(), step):
        r, c = rows_N[i : i + step], cols_N[i : i + step]
        out[i : i + step] = torch.bmm(W_CD[c].unsqueeze(1), A_RD[r].unsqueeze(2)).view(-1)
    return out


def _sum_into_full(parts: list[tuple[torch.Tensor | None, torch.Tensor]], full_rows: int) -> torch.Tensor:
    """Sum per-selection gradients ``[n, ...]`` into one ``[full_rows, ...]`` tensor, scattering
    those of subset selections (``subset_S`` given) into their rows, in place where possible."""
    total = next((g for subset, g in parts if subset is None), None)
    if total is None:
        ref = parts[0][1]
        total = torch.zeros(full_rows, *ref.shape[1:], dtype=ref.dtype, device=ref.device)
    for subset, g in parts:
        if g is total:
            continue
        if subset is None:
            total += g
        else:
            total.index_add_(0, subset, g)
    return total


TRANSPOSE_BLOCK_ROWS = 256
"""On CPU, ``transpose_copy`` moves this many rows at a time (blocks stay in cache; one strided copy
of the whole matrix does not)."""


def transpose_copy(a_RC: torch.Tensor) -> torch.Tensor:
    """``a.T`` as a new contiguous ``[C, R]`` tensor (on CPU in blocks of rows, which keeps the
    strided reads within cache)."""
    if a_RC.device.type != "cpu":
        return a_RC.T.contiguous()
    out_CR = a_RC.new_empty(a_RC.shape[1], a_RC.shape[0])
    for i in range(0, a_RC.shape[0], TRANSPOSE_BLOCK_ROWS):
        out_CR[:, i : i + TRANSPOSE_BLOCK_ROWS] = a_RC[i : i + TRANSPOSE_BLOCK_ROWS].T
    return out_CR


def _split(flat: tuple, n_fields: int) -> list[tuple]:
    return [tuple(flat[i : i + n_fields]) for i in range(0, len(flat), n_fields)]


class _EncodeSelected(torch.autograd.Function):
    """Values of one or more selections ``(rows_N, cols_N, vals_N, subset_S)`` of the same
    pre-activations, with one backward for all (their gradients are summed in place)."""

    @staticmethod
    def forward(ctx, x_c_BD, W_enc_DF, b_enc_F, b_dec_O, *flat):  # type: ignore[override]
        ctx.save_for_backward(x_c_BD, W_enc_DF, *[t for t in flat])
        ctx.has_b_dec = b_dec_O is not None
        return tuple(vals_N.clone() for _, _, vals_N, _ in _split(flat, 4))

    @staticmethod
    def backward(ctx, *grads_N):  # type: ignore[override]
        x_c_BD, W_enc_DF, *flat = ctx.saved_tensors
        d_in, d_sae = W_enc_DF.shape
        x_c = x_c_BD.to(W_enc_DF.dtype)
        grads_b, grads_W = [], []
        for (rows_N, cols_N, vals_N, subset_S), grad_N in zip(_split(flat, 4), grads_N):
            if grad_N is None:
                continue
            n = d_sae if subset_S is None else subset_S.numel()
            g_N = (grad_N * (vals_N > 0)).to(W_enc_DF.dtype)
            grads_b.append((subset_S, torch.zeros(n, dtype=g_N.dtype, device=g_N.device).index_add_(0, cols_N, g_N)))
            grads_W.append((subset_S, spmm_t(rows_N, cols_N, g_N, x_c, n)))
        if not grads_b:
            return (None,) * (4 + len(flat))
        grad_b_enc_F = _sum_into_full(grads_b, d_sae)
        # computed as [F, D] whatever the kernel, returned laid out as W_enc [D, F] (so autograd
        # keeps it without another copy)
        grad_W_enc_DF = transpose_copy(_sum_into_full(grads_W, d_sae))
        grad_b_dec_D = -(W_enc_DF @ grad_b_enc_F) if ctx.has_b_dec else None
        return (None, grad_W_enc_DF, grad_b_enc_F, grad_b_dec_D, *[None] * len(flat))


class _DecodeSelected(torch.autograd.Function):
    """``[n_rows, D]`` decodes of one or more selections ``(rows_N, cols_N, coef_N, subset_S)``
    through the same decoder, with one backward for all."""

    @staticmethod
    def forward(ctx, W_dec_FO, n_rows: int, *flat):  # type: ignore[override]
        outs, saved = [], []
        for rows_N, cols_N, coef_N, subset_S in _split(flat, 4):
            W_CD = W_dec_FO if subset_S is None else W_dec_FO.index_select(0, subset_S)
            outs.append(spmm(rows_N, cols_N, coef_N, W_CD, n_rows))
            saved += [rows_N, cols_N, coef_N, subset_S, W_CD]
        ctx.save_for_backward(*saved)
        ctx.d_sae = W_dec_FO.shape[0]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads_RD):  # type: ignore[override]
        parts = _split(ctx.saved_tensors, 5)
        grads_coef, grads_W = [], []
        for (rows_N, cols_N, coef_N, subset_S, W_CD), grad_RD in zip(parts, grads_RD):
            if grad_RD is None:
                grads_coef.append(None)
                continue
            grad_RD = grad_RD.contiguous().to(W_CD.dtype)
            grads_coef.append(sddmm(rows_N, cols_N, grad_RD, W_CD).to(coef_N.dtype))
            if ctx.needs_input_grad[0]:
                grads_W.append((subset_S, spmm_t(rows_N, cols_N, coef_N.to(W_CD.dtype), grad_RD, W_CD.shape[0])))
        grad_W = _sum_into_full(grads_W, ctx.d_sae) if grads_W else None
        out = [grad_W, None]
        for g in grads_coef:
            out += [None, None, g, None]
        return tuple(out)


@torch.no_grad()
def pre_acts(x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, b_dec_O: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_c, pre)`` outside autograd: ``x_c = x - b_dec`` (or ``x`` when ``b_dec_O`` is None)
    and ``pre = x_c @ W_enc + b_enc`` (in the autocast dtype under autocast)."""
    if x_BD.requires_grad:
        raise ValueError("the sparse encoder computes no gradient for its input; detach x_BD")
    x_c_BD = x_BD - b_dec_O if b_dec_O is not None else x_BD
    return x_c_BD, torch.addmm(b_enc_F, x_c_BD, W_enc_DF)


def encode_selected(x_c_BD, W_enc_DF, b_enc_F, b_dec_O, rows_N, cols_N, vals_N, subset_S=None, aux=None):
    """``vals_N`` (``relu`` of the selected pre-activations, computed by the caller) with gradients
    to the encoder through those entries only. ``cols_N`` index ``subset_S`` when given. With
    ``aux = (rows, cols, vals, subset)``, a second selection (AuxK's): returns both value tensors,
    their encoder gradients summed in one backward."""
    flat = (rows_N, cols_N, vals_N, subset_S, *(aux or ()))
    out = _EncodeSelected.apply(x_c_BD, W_enc_DF, b_enc_F, b_dec_O, *flat)
    return out if aux is not None else out[0]


def decode_selected(rows_N, cols_N, coef_N, W_dec_FO, n_rows: int, subset_S=None, aux=None):
    """``[n_rows, D]``: ``sum coef * W_dec[cols]`` per row (no bias); ``cols_N`` index ``subset_S``
    when given; rows sorted. With ``aux = (rows, cols, coef, subset)``: both decodes, one backward."""
    flat = (rows_N, cols_N, coef_N, subset_S, *(aux or ()))
    out = _DecodeSelected.apply(W_dec_FO, n_rows, *flat)
    return out if aux is not None else out[0]


def topk_select(pre_BF: torch.Tensor, k: int, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows_N, cols_N, vals_N)`` of the ``k`` largest entries of each row, ReLU applied."""
    with torch.no_grad():
        vals_BK, idx_BK = pre_BF.topk(k, dim=1, sorted=False)
        rows_N = torch.arange(pre_BF.shape[0], device=pre_BF.device).repeat_interleave(k)
        return rows_N, idx_BK.reshape(-1), vals_BK.reshape(-1).to(out_dtype).clamp_min_(0)


def sparse_decode(idx_BK: torch.Tensor, vals_BK: torch.Tensor, W_dec_FO: torch.Tensor, b_dec_O: torch.Tensor) -> torch.Tensor:
    """``sum_k vals[b, k] * W_dec[idx[b, k]] + b_dec`` as ``[B, D]`` without a dense ``[B, F]``."""
    B, K = idx_BK.shape
    rows_N = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    return decode_selected(rows_N, idx_BK.reshape(-1), vals_BK.reshape(-1), W_dec_FO, B) + b_dec_O


def batch_topk_select(pre_BF: torch.Tensor, n_keep: int, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows_N, cols_N, vals_N)``: the ``n_keep`` largest entries of the whole batch, ReLU
    applied, sorted by row."""
    with torch.no_grad():
        d_sae = pre_BF.shape[1]
        vals_N, flat_N = pre_BF.view(-1).topk(min(n_keep, pre_BF.numel()), sorted=False)
        flat_N, order = flat_N.sort()
        return flat_N // d_sae, flat_N % d_sae, vals_N[order].to(out_dtype).clamp_min_(0)


def ragged_decode(
    rows_N: torch.Tensor, cols_N: torch.Tensor, vals_N: torch.Tensor, W_dec_FO: torch.Tensor, b_dec_O: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """``[n_rows, D]``: ``b_dec + sum vals * W_dec[cols]`` per row, for entries sorted by row."""
    return decode_selected(rows_N, cols_N, vals_N, W_dec_FO, n_rows) + b_dec_O


def auxk_select(pre_BF: torch.Tensor, dead_idx_S: torch.Tensor, k_aux: int, out_dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AuxK's ``(rows_N, pos_N, vals_N)``: the ``k_aux`` largest pre-activations per row among the
    latents ``dead_idx_S`` (``pos`` indexes it), from the step's shared pre-activations, ReLU
    applied (pass them to ``encode_selected(..., aux=(rows, pos, vals, dead_idx_S))``)."""
    return topk_select(pre_BF[:, dead_idx_S], k_aux, out_dtype)
