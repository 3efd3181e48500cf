"""ReLU SAE with a decoder-norm-weighted sparsity penalty (Anthropic, April 2024 update).

``acts = relu(x_c @ W_enc + b_enc)``; loss = MSE + coef * sum_i f_i ||W_dec[i]|| (``l1``), or
sum_i tanh(c f_i ||W_dec[i]||) (``tanh``, Anthropic February 2025), plus optionally Anthropic's
pre-activation loss (January 2025) ``pre_act_coef * sum_i relu(-pre_i) ||W_dec[i]||``. The
coefficient warms up linearly over ``sparsity_warmup_fraction`` of training. Decoder norms are
free (the penalty is weighted by them instead of a unit-norm constraint); decoder rows start at
norm ``decoder_init_norm`` with ``W_enc = W_dec^T``.
Neuron resampling (Bricken et al. 2023), when ``resample_every`` > 0: every that many tokens
(until ``resample_until`` of training), each dead latent gets a training input of the current
batch, drawn with probability proportional to its squared reconstruction error, as decoder
direction (at the mean live decoder norm) and encoder column (at 0.2 x the mean live encoder
norm); its bias is zeroed and the trainer resets its Adam moments (``reset_latents``).
Saved as SAELens ``standard`` (``transcoder`` for transcoders with d_out != d_in).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from saes.errors import ConfigError
from saes.sae.base import SAE, SAEConfig, StepInput, TrainStepOutput, fvu_and_mse, linear_warmup
from saes.sae.penalties import norm_weighted_penalty, pre_act_penalty
from saes.sae.registry import register



class Penalty(StrEnum):
    """The decoder-norm-weighted sparsity penalty."""

    l1 = "l1"
    tanh = "tanh"


@dataclass
class ReLUConfig(SAEConfig):
    architecture: str = "relu"
    decoder_init_norm: float = 0.1
    l1_coef: float = 3.0
    """Weight of the sparsity penalty (after warmup)."""
    penalty: Penalty = Penalty.l1
    """``l1`` or ``tanh`` (both weighted by decoder row norms)."""
    tanh_scale: float = 4.0
    """c in the ``tanh`` penalty."""
    pre_act_coef: float = 0.0
    """Weight of the pre-activation loss (0: off; Anthropic used 3e-6)."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of training over which the penalty coefficient rises linearly from 0."""
    resample_every: int = 0
    """Resample dead latents every this many training tokens (0: never)."""
    resample_until: float = 0.5
    """No resampling after this fraction of training."""


@register("relu")
class ReLUSAE(SAE):
    config_class = ReLUConfig
    cfg: ReLUConfig
    unit_norm_decoder = False

    def __init__(self, cfg: ReLUConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        if cfg.resample_every < 0:
            raise ConfigError(f"sae.resample_every={cfg.resample_every} must be >= 0 (0 disables resampling)")

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x_BD).relu()

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        cfg = self.cfg
        x_BD, y_BD = step.x_BD, step.y_BO
        reset = None
        if cfg.resample_every and step.progress < cfg.resample_until:
            tokens = step.tokens
            if tokens > 0 and tokens // cfg.resample_every != (tokens + x_BD.shape[0]) // cfg.resample_every:
                if step.dead_F is not None and bool(step.dead_F.any()):
                    reset = self.resample(x_BD, y_BD, step.dead_F)
        pre_BF = self.pre_acts(x_BD)
        acts_BF = pre_BF.relu()
        y_hat_BD = self.decode(acts_BF)
        fvu, mse = fvu_and_mse(y_BD, y_hat_BD, step.total_variance(y_BD))
        dec_norm_F = self.W_dec_FO.norm(dim=1)
        sparsity = norm_weighted_penalty(acts_BF, dec_norm_F, cfg.penalty, cfg.tanh_scale).float().mean()
        coef = cfg.l1_coef * linear_warmup(step.progress, cfg.sparsity_warmup_fraction)
        loss = mse + coef * sparsity
        losses = {"fvu": fvu.item(), "mse": mse.item(), "sparsity": sparsity.item(), "sparsity_coef": coef}
        if cfg.pre_act_coef > 0:
            pre_act = pre_act_penalty(pre_BF, 0.0, dec_norm_F).float().mean()
            loss = loss + cfg.pre_act_coef * pre_act
            losses["pre_act"] = pre_act.item()
        active_BF = acts_BF > 0
        return TrainStepOutput(loss=loss, y_hat_BO=y_hat_BD.detach(), fired_F=active_BF.any(0),
                               l0=active_BF.sum().item() / x_BD.shape[0], losses=losses, reset_latents=reset)

    @torch.no_grad()
    def resample(self, x_BD: torch.Tensor, y_BD: torch.Tensor, dead_F: torch.Tensor) -> torch.Tensor | None:
        """Re-initialise dead latents from badly reconstructed inputs; returns their indices (the
        trainer resets their optimizer state), or None when nothing was resampled."""
        dead_idx = dead_F.nonzero().squeeze(1)
        err_B = (self(x_BD) - y_BD).pow(2).sum(-1).float()
        if float(err_B.sum()) <= 0:
            return None
        picks = torch.multinomial(err_B / err_B.sum(), dead_idx.numel(), replacement=True)
        live_F = ~dead_F
        dec_norm = self.W_dec_FO[live_F].norm(dim=1).mean() if bool(live_F.any()) else self.cfg.decoder_init_norm
        enc_norm = self.W_enc_DF[:, live_F].norm(dim=0).mean() if bool(live_F.any()) else 1.0
        target_ND = y_BD[picks] - self.b_dec_O
        source_ND = self.centered(x_BD[picks])
        self.W_dec_FO[dead_idx] = target_ND / target_ND.norm(dim=1, keepdim=True).clamp_min(1e-8) * dec_norm
        self.W_enc_DF[:, dead_idx] = (source_ND / source_ND.norm(dim=1, keepdim=True).clamp_min(1e-8) * enc_norm * 0.2).T
        self.b_enc_F[dead_idx] = 0.0
        return dead_idx

    def saelens_architecture(self) -> str:
        return "standard"

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        if cfg.get("architecture") not in ("standard", "transcoder"):
            return None
        return {"architecture": "relu", "d_sae": cfg["d_sae"]}
