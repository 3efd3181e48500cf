"""TopK SAE (Gao et al. 2024): keep the K largest pre-activations per token, with AuxK.

Decoder rows are kept at unit norm (gradient projected, rows renormalised after each step).
AuxK: the residual ``y - x_hat`` is reconstructed from the ``aux_k`` largest pre-activations
among dead latents, and that FVU, times ``aux_coef``, is added to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saes.errors import ConfigError
from saes.sae.base import SAE, SAEConfig, TrainStepOutput
from saes.sae.registry import register
from saes.sae.sparse_ops import sparse_decode, topk_encode


@dataclass
class TopKConfig(SAEConfig):
    architecture: str = "topk"
    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Latents used by AuxK; None: d_in / 2."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        if not 0 < cfg.k <= self.d_sae:
            raise ConfigError(f"sae.k={cfg.k} must be in [1, d_sae={self.d_sae}]")
        self.k = cfg.k
        self.aux_k = cfg.aux_k or max(1, d_in // 2)

    def _b_dec_in(self) -> torch.Tensor | None:
        return self.b_dec_D if self.d_out == self.d_in else None

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        vals_BK, idx_BK = self.pre_acts(x_BD).topk(self.k, dim=1, sorted=False)
        return torch.zeros(x_BD.shape[0], self.d_sae, dtype=vals_BK.dtype, device=x_BD.device).scatter_(
            1, idx_BK, vals_BK.clamp_min(0)
        )

    def training_forward(self, x_BD: torch.Tensor, y_BD: torch.Tensor, state: dict[str, Any]) -> TrainStepOutput:
        vals_BK, idx_BK = topk_encode(x_BD, self.W_enc_DF, self.b_enc_F, self._b_dec_in(), self.k)
        y_hat_BD = sparse_decode(idx_BK, vals_BK, self.W_dec_FD, self.b_dec_D)
        total_var = (y_BD - y_BD.mean(0)).pow(2).sum()
        err_BD = y_BD - y_hat_BD
        fvu = err_BD.pow(2).sum() / total_var
        loss = fvu
        losses = {"fvu": fvu.item()}
        dead_F: torch.Tensor | None = state.get("dead_F")
        if dead_F is not None and self.cfg.aux_coef > 0 and bool(dead_F.any()):
            auxk = self._auxk_loss(x_BD, err_BD.detach(), dead_F, total_var)
            loss = loss + self.cfg.aux_coef * auxk
            losses["auxk"] = auxk.item()
        active = vals_BK > 0
        fired_F = torch.zeros(self.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[idx_BK[active]] = True
        return TrainStepOutput(
            loss=loss,
            x_hat_BD=y_hat_BD.detach(),
            fired_F=fired_F,
            l0=active.sum().item() / x_BD.shape[0],
            losses=losses,
        )

    def _auxk_loss(self, x_BD: torch.Tensor, err_BD: torch.Tensor, dead_F: torch.Tensor, total_var: torch.Tensor) -> torch.Tensor:
        """FVU of the residual reconstructed by the top ``aux_k`` dead latents, scaled down when
        fewer than ``aux_k`` latents are dead (as in sparsify)."""
        dead_idx = dead_F.nonzero().squeeze(1)
        k_aux = min(self.aux_k, dead_idx.numel())
        x_in = x_BD - self.b_dec_D if self.d_out == self.d_in else x_BD
        pre_BN = x_in @ self.W_enc_DF[:, dead_idx] + self.b_enc_F[dead_idx]
        vals_BK, pos_BK = pre_BN.topk(k_aux, dim=1, sorted=False)
        err_hat_BD = sparse_decode(dead_idx[pos_BK], vals_BK.clamp_min(0), self.W_dec_FD, torch.zeros_like(self.b_dec_D))
        scale = min(dead_idx.numel() / self.aux_k, 1.0)
        return scale * (err_hat_BD - err_BD).pow(2).sum() / total_var

    @torch.no_grad()
    def before_step(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row."""
        g = self.W_dec_FD.grad
        if g is not None:
            w = self.W_dec_FD
            g -= (g * w).sum(dim=1, keepdim=True) * w

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec_FD /= self.W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "topk", "k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        if cfg.get("architecture") != "topk" or cfg.get("rescale_acts_by_decoder_norm"):
            return None
        return {"architecture": "topk", "d_sae": cfg["d_sae"], "k": cfg["k"]}
