"""JumpReLU SAE (Rajamanoharan et al. 2024): ``acts = z * (z > threshold)`` per latent.

Training: loss = MSE + coef * sparsity. Thresholds are trained through straight-through
estimators (``saes.sae.penalties``) as ``log_threshold_F`` with their own learning-rate factor
(Adam moves a parameter by about lr per step; the factor lets thresholds cover orders of
magnitude in a short run). ``sparsity_loss``:
- ``step``: L0 (DeepMind's JumpReLU; decoder rows kept at unit norm);
- ``quadratic``: ``2 / target_l0 * (L0 - target_l0)^2`` per token (Gemma Scope 2; unit-norm
  decoder);
- ``tanh``: sum tanh(c * f * ||W_dec||) (Anthropic, February 2025; decoder norms free, weighted).
``pre_act_coef`` adds Anthropic's pre-activation loss. The sparsity coefficient warms up linearly.
Saved as SAELens ``jumprelu`` (``threshold = exp(log_threshold)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from saes.errors import ConfigError
from saes.sae.base import SAE, SAEConfig, StepInput, TrainStepOutput, copy_named, fvu_and_mse, linear_warmup
from saes.sae.penalties import JumpReLU, Step, norm_weighted_penalty, pre_act_penalty
from saes.sae.registry import register



class SparsityLoss(StrEnum):
    """What the sparsity coefficient multiplies."""

    step = "step"
    quadratic = "quadratic"
    tanh = "tanh"


@dataclass
class JumpReLUConfig(SAEConfig):
    architecture: str = "jumprelu"
    l0_coef: float = 0.6
    """Weight of the sparsity loss (after warmup)."""
    sparsity_loss: SparsityLoss = SparsityLoss.step
    """``step`` (L0), ``quadratic`` (around ``target_l0``) or ``tanh``."""
    target_l0: float | None = None
    """Target L0 of the ``quadratic`` loss."""
    tanh_scale: float = 4.0
    """c in the ``tanh`` loss."""
    sparsity_warmup_fraction: float = 0.1
    """Fraction of training over which the sparsity coefficient rises linearly from 0."""
    bandwidth: float = 0.05
    """Width of the straight-through rectangle kernel (in normalized pre-activation units)."""
    threshold_init: float = 0.1
    """Initial threshold of every latent."""
    threshold_lr_factor: float = 10.0
    """Learning rate of ``log_threshold`` relative to the other parameters."""
    pre_act_coef: float = 0.0
    """Weight of Anthropic's pre-activation loss (0: off; Anthropic used 3e-6)."""


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        if cfg.sparsity_loss == "quadratic" and not (cfg.target_l0 and 0 < cfg.target_l0 <= self.d_sae):
            raise ConfigError(f"sae.target_l0={cfg.target_l0} must be in (0, d_sae] with sae.sparsity_loss=quadratic")
        if cfg.sparsity_loss != "quadratic" and cfg.target_l0 is not None:
            raise ConfigError("sae.target_l0 only applies to sae.sparsity_loss=quadratic; remove it or switch the loss")
        if cfg.bandwidth <= 0 or cfg.threshold_init <= 0:
            raise ConfigError(f"sae.bandwidth={cfg.bandwidth} and sae.threshold_init={cfg.threshold_init} must be positive")
        self.log_threshold_F = nn.Parameter(torch.full((self.d_sae,), math.log(cfg.threshold_init)))
        self.unit_norm_decoder = cfg.sparsity_loss != "tanh"

    @property
    def threshold_F(self) -> torch.Tensor:
        return self.log_threshold_F.exp()

    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None, decoder_norm: float | None = None) -> None:
        super().initialize(generator, decoder_norm)
        self.log_threshold_F.fill_(math.log(self.cfg.threshold_init))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        others = [p for name, p in self.named_parameters() if name != "log_threshold_F"]
        return [{"params": others, "lr": lr}, {"params": [self.log_threshold_F], "lr": lr * self.cfg.threshold_lr_factor}]

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_acts(x_BD)
        return pre_BF * (pre_BF > self.threshold_F)  # threshold >= 0, so this is relu(z) * (z > t)

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        x_BD, y_BD = step.x_BD, step.y_BO
        pre_BF = self.pre_acts(x_BD)
        threshold_F = self.threshold_F.to(pre_BF.dtype)
        acts_BF = JumpReLU.apply(pre_BF, threshold_F, self.cfg.bandwidth)
        y_hat_BD = self.decode(acts_BF)
        fvu, mse = fvu_and_mse(y_BD, y_hat_BD, step.total_variance(y_BD))
        cfg = self.cfg
        dec_norm_F = self.W_dec_FO.norm(dim=1)
        if cfg.sparsity_loss == "tanh":
            per_token_B = norm_weighted_penalty(acts_BF, dec_norm_F, "tanh", cfg.tanh_scale)
        else:
            l0_B = Step.apply(pre_BF, threshold_F, cfg.bandwidth).sum(-1)
            per_token_B = l0_B if cfg.sparsity_loss == "step" else 2 / cfg.target_l0 * (l0_B - cfg.target_l0) ** 2
        sparsity = per_token_B.float().mean()
        coef = cfg.l0_coef * linear_warmup(step.progress, cfg.sparsity_warmup_fraction)
        loss = mse + coef * sparsity
        losses = {"fvu": fvu.item(), "mse": mse.item(), "sparsity": sparsity.item(), "sparsity_coef": coef}
        if cfg.pre_act_coef > 0:
            pre_act = pre_act_penalty(pre_BF, threshold_F, dec_norm_F).float().mean()
            loss = loss + cfg.pre_act_coef * pre_act
            losses["pre_act"] = pre_act.item()
        active_BF = acts_BF != 0
        return TrainStepOutput(loss=loss, y_hat_BO=y_hat_BD.detach(), fired_F=active_BF.any(0),
                               l0=active_BF.sum().item() / x_BD.shape[0], losses=losses)

    @torch.no_grad()
    def fold_decoder_norms(self) -> torch.Tensor:
        norms_F = super().fold_decoder_norms()
        self.log_threshold_F += norms_F.log()
        return norms_F

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold_F}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        # a threshold <= 0 passes every positive pre-activation, like threshold 0 (log -> -inf)
        logs = {"threshold": tensors["threshold"].clamp_min(0).log()} if "threshold" in tensors else {}
        copy_named(logs, {"threshold": self.log_threshold_F})
        super().load_saelens_tensors(tensors)

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        if cfg.get("architecture") not in ("jumprelu", "jumprelu_transcoder"):
            return None
        return {"architecture": "jumprelu", "d_sae": cfg["d_sae"]}
