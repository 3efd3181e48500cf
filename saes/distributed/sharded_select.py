"""Top-k selections over latents split across ranks (openai/sparse_autoencoder's sharded top-k).

Each rank holds the pre-activations of its own latents, ``pre_BF [B, F_local]``, for the same
batch. It takes its local top candidates (a global winner is among its shard's local top), the
candidates' values are all-gathered (padded with ``-inf`` to one size, so uneven shards work), the
global top is taken over the candidates (the same computation on every rank), and each rank keeps
the winners that are its own. Up to ties, this selects exactly what one process selects over all
latents. Every function here is a collective (one all-gather): all ranks must call it alike.

Selections are returned as in ``saes.sae.sparse_ops``: ``(rows_N, cols_N, vals_N)`` sorted by
row, ``cols`` indexing this rank's latents, ReLU applied, plus the values of all the global
winners (identical on every rank; for L0 and BatchTopK's threshold without another collective).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from saes.distributed.collectives import Group, all_gather_cat


def _global_top(cand_RC: torch.Tensor, n: int, c_pad: int, group: Group
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's share of the ``n`` largest candidates of each row over all ranks.

    ``cand_RC``: local candidate values ``[R, C]`` (``C <= c_pad``, ``c_pad`` the same on every
    rank). Returns ``(rows_N, pos_N, top_Rn)``: the rows and candidate positions (into ``C``) of
    this rank's winners, sorted by row, and the values of all ``n`` winners of each row."""
    R, C = cand_RC.shape
    dtype = torch.promote_types(cand_RC.dtype, torch.float32)  # bf16/fp16 widened exactly
    padded_RC = torch.full((R, c_pad), -torch.inf, dtype=dtype, device=cand_RC.device)
    padded_RC[:, :C] = cand_RC
    gathered_RW = all_gather_cat(padded_RC, group, dim=1)  # [R, world * c_pad]
    top_Rn, idx_Rn = gathered_RW.topk(n, dim=1, sorted=False)
    r, j = (idx_Rn // c_pad == dist.get_rank(group)).nonzero(as_tuple=True)
    won_RC = torch.zeros(R, c_pad, dtype=torch.bool, device=cand_RC.device)
    won_RC[r, idx_Rn[r, j] % c_pad] = True
    rows_N, pos_N = won_RC[:, :C].nonzero(as_tuple=True)  # row-major: sorted by row
    return rows_N, pos_N, top_Rn


@torch.no_grad()
def sharded_topk_select(pre_BF: torch.Tensor, k: int, out_dtype: torch.dtype, max_cols: int, group: Group = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest pre-activations of each token over all shards: this rank's
    ``(rows_N, cols_N, vals_N)`` and every winner's value ``[B, k]``. ``max_cols``: the largest
    shard's latent count (the same on every rank)."""
    cand_BC, idx_BC = pre_BF.topk(min(k, pre_BF.shape[1]), dim=1, sorted=False)
    rows_N, pos_N, top_Bk = _global_top(cand_BC, k, min(k, max_cols), group)
    vals_N = cand_BC[rows_N, pos_N].to(out_dtype).clamp_min_(0)
    return rows_N, idx_BC[rows_N, pos_N], vals_N, top_Bk.to(out_dtype)


@torch.no_grad()
def sharded_batch_topk_select(pre_BF: torch.Tensor, n_keep: int, out_dtype: torch.dtype, max_cols: int,
                              group: Group = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n_keep`` largest pre-activations of the whole batch over all shards: this rank's
    ``(rows_N, cols_N, vals_N)`` (sorted by row) and every winner's value ``[n_keep]``."""
    B, F = pre_BF.shape
    cand_C, flat_C = pre_BF.reshape(-1).topk(min(n_keep, B * F), sorted=False)
    _, pos_N, top_1n = _global_top(cand_C[None], n_keep, min(n_keep, B * max_cols), group)
    flat_N, order = flat_C[pos_N].sort()
    vals_N = cand_C[pos_N][order].to(out_dtype).clamp_min_(0)
    return flat_N // F, flat_N % F, vals_N, top_1n[0].to(out_dtype)


@torch.no_grad()
def sharded_auxk_select(pre_BF: torch.Tensor, dead_idx_S: torch.Tensor, k_aux: int, out_dtype: torch.dtype,
                        group: Group = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AuxK's ``(rows_N, pos_N, vals_N)``: the ``k_aux`` largest pre-activations of each token
    among the dead latents of all shards (``k_aux`` at most the global dead count), this rank's
    share; ``pos`` indexes this rank's dead latents ``dead_idx_S`` (which may be empty)."""
    cand_BC, pos_BC = pre_BF[:, dead_idx_S].topk(min(k_aux, dead_idx_S.numel()), dim=1, sorted=False)
    rows_N, j_N, _ = _global_top(cand_BC, k_aux, k_aux, group)
    return rows_N, pos_BC[rows_N, j_N], cand_BC[rows_N, j_N].to(out_dtype).clamp_min_(0)
