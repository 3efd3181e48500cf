"""Plain dense PyTorch TopK (+AuxK) and BatchTopK SAE steps: the reference our fast paths must match.

Everything is dense and left to autograd: pre-activations ``[B, F]``, ``torch.topk``, a dense
scatter into ``[B, F]`` activations and a dense decoder matmul (SAELens-style). The math is that
of ``saes.sae.topk.TopKSAE.training_forward`` / ``saes.sae.batchtopk.BatchTopKSAE`` plus the
trainer's unit-norm decoder handling (``SAETrainer.step``):

    x_c = x - b_dec;  pre = x_c @ W_enc + b_enc          (addmm, as ours, so autocast rounds alike)
    acts = relu(topk(pre, k)) scattered into zeros        (BatchTopK: top k*B of the whole batch)
    y_hat = acts @ W_dec + b_dec;  fvu = sum (y - y_hat)^2 / sum (y - mean(y))^2
    AuxK (some latents dead): the k_aux largest dead pre-activations reconstruct (y - y_hat).detach()
        without b_dec; auxk = min(n_dead / k_aux, 1) * sum (err_hat - err)^2 / total_var
    loss = fvu + aux_coef * auxk
    step: grad(W_dec) -= <grad, w> w per row; clip grad norm; Adam; rows of W_dec renormalised.

No import from ``saes``: an independent implementation (tests/sae/test_fast_paths.py compares them).
"""

from __future__ import annotations

from typing import Any

import torch


def dense_pre_acts(x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, b_dec_O: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b_enc_F, x_BD - b_dec_O, W_enc_DF)


def dense_topk_loss(
    params: dict[str, torch.Tensor], x_BD: torch.Tensor, y_BD: torch.Tensor, k: int,
    dead_F: torch.Tensor | None = None, aux_k: int | None = None, aux_coef: float = 1 / 32, batch_topk: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, {"fvu", "auxk"?, "acts_BF"})`` with dense autograd. ``params``: W_enc_DF, b_enc_F,
    W_dec_FO, b_dec_O."""
    W_enc, b_enc, W_dec, b_dec = params["W_enc_DF"], params["b_enc_F"], params["W_dec_FO"], params["b_dec_O"]
    d_in, d_sae = W_enc.shape
    pre_BF = dense_pre_acts(x_BD, W_enc, b_enc, b_dec)
    if batch_topk:
        vals, flat = pre_BF.reshape(-1).topk(min(k * x_BD.shape[0], pre_BF.numel()), sorted=False)
        acts_BF = torch.zeros(pre_BF.numel(), dtype=x_BD.dtype, device=x_BD.device).scatter(0, flat, vals.to(x_BD.dtype).relu()).view_as(pre_BF)
    else:
        vals, idx = pre_BF.topk(k, dim=1, sorted=False)
        acts_BF = torch.zeros(pre_BF.shape, dtype=x_BD.dtype, device=x_BD.device).scatter(1, idx, vals.to(x_BD.dtype).relu())
    y_hat_BD = acts_BF @ W_dec + b_dec
    y, total_var = y_BD.float(), (y_BD.float() - y_BD.float().mean(0)).pow(2).sum()
    fvu = (y - y_hat_BD.float()).pow(2).sum() / total_var
    out: dict[str, torch.Tensor] = {"fvu": fvu, "acts_BF": acts_BF}
    loss = fvu
    if dead_F is not None and aux_coef > 0 and bool(dead_F.any()):
        aux_k = aux_k or max(1, d_in // 2)
        n_dead = int(dead_F.sum())
        k_aux = min(aux_k, n_dead)
        dead_idx = dead_F.nonzero().squeeze(1)  # top k_aux of the dead columns (ties break as in ours)
        a_vals, a_pos = pre_BF[:, dead_idx].topk(k_aux, dim=1, sorted=False)
        a_idx = dead_idx[a_pos]
        aux_BF = torch.zeros(pre_BF.shape, dtype=x_BD.dtype, device=x_BD.device).scatter(1, a_idx, a_vals.to(x_BD.dtype).relu())
        err_hat_BD = aux_BF @ W_dec
        err_BD = (y_BD - y_hat_BD).detach()
        auxk = min(n_dead / aux_k, 1.0) * (err_hat_BD.float() - err_BD.float()).pow(2).sum() / total_var
        out["auxk"] = auxk
        loss = loss + aux_coef * auxk
    return loss, out


@torch.no_grad()
def project_decoder_grad(W_dec_FO: torch.Tensor) -> None:
    """Remove the gradient component parallel to each (unit) decoder row."""
    g = W_dec_FO.grad
    g -= (g * W_dec_FO).sum(dim=1, keepdim=True) * W_dec_FO


@torch.no_grad()
def renorm_decoder(W_dec_FO: torch.Tensor) -> None:
    W_dec_FO /= W_dec_FO.norm(dim=1, keepdim=True).clamp_min(1e-8)


class DenseTopKSAE(torch.nn.Module):
    """Parameters in our layout; ``step`` = forward, backward, decoder-grad projection, clipping,
    Adam, renormalisation (one training step of ``SAETrainer`` on normalised activations)."""

    def __init__(self, d_in: int, d_sae: int, k: int, aux_k: int | None = None, aux_coef: float = 1 / 32,
                 batch_topk: bool = False):
        super().__init__()
        self.k, self.aux_k, self.aux_coef, self.batch_topk = k, aux_k, aux_coef, batch_topk
        self.W_enc_DF = torch.nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc_F = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec_FO = torch.nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec_O = torch.nn.Parameter(torch.zeros(d_in))

    def params(self) -> dict[str, torch.Tensor]:
        return {"W_enc_DF": self.W_enc_DF, "b_enc_F": self.b_enc_F, "W_dec_FO": self.W_dec_FO, "b_dec_O": self.b_dec_O}

    def loss(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        return dense_topk_loss(self.params(), x_BD, x_BD, self.k, dead_F, self.aux_k, self.aux_coef, self.batch_topk)

    def step(self, optimizer: torch.optim.Optimizer, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None,
             grad_clip: float = 1.0, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        with torch.autocast(x_BD.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss, _ = self.loss(x_BD, dead_F)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        project_decoder_grad(self.W_dec_FO)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters(), grad_clip)
        optimizer.step()
        renorm_decoder(self.W_dec_FO)
        return loss.detach()
