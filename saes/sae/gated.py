"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude path
how strongly, with shared encoder directions.

``pi_gate = x_c @ W_enc + b_gate`` (``b_gate`` is ``b_enc_F``); ``pi_mag = x_c @ (W_enc *
exp(r_mag)) + b_mag``; ``acts = (pi_gate > 0) * relu(pi_mag)``.
Training loss = MSE + coef * sum relu(pi_gate) (L1 on the gate, after linear warmup) + MSE of
the reconstruction from ``relu(pi_gate)`` through a frozen (detached) decoder, which trains the
gate. Decoder rows are kept at unit norm (as in the paper). Saved as SAELens ``gated``
(``b_gate``, ``r_mag``, ``b_mag``; no ``b_enc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saes.sae.base import SAE, SAEConfig, StepInput, TrainStepOutput, copy_named, fvu_and_mse, linear_warmup
from saes.sae.registry import register


@dataclass
class GatedConfig(SAEConfig):
    architecture: str = "gated"
    l1_coef: float = 2.3
    """Weight of the L1 penalty on relu(pi_gate) (after warmup)."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of training over which the L1 coefficient rises linearly from 0."""


@register("gated")
class GatedSAE(SAE):
    config_class = GatedConfig
    cfg: GatedConfig

    def __init__(self, cfg: GatedConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        self.r_mag_F = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag_F = nn.Parameter(torch.zeros(self.d_sae))

    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None, decoder_norm: float | None = None) -> None:
        super().initialize(generator, decoder_norm)
        self.r_mag_F.zero_()
        self.b_mag_F.zero_()

    def gate_and_magnitude(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pi_gate_BF, pi_mag_BF)`` from one encoder matmul."""
        proj_BF = self.centered(x_BD) @ self.W_enc_DF
        return proj_BF + self.b_enc_F, proj_BF * self.r_mag_F.exp() + self.b_mag_F

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pi_gate_BF, pi_mag_BF = self.gate_and_magnitude(x_BD)
        return (pi_gate_BF > 0) * pi_mag_BF.relu()

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        x_BD, y_BD = step.x_BD, step.y_BO
        pi_gate_BF, pi_mag_BF = self.gate_and_magnitude(x_BD)
        acts_BF = (pi_gate_BF > 0) * pi_mag_BF.relu()
        y_hat_BD = self.decode(acts_BF)
        fvu, mse = fvu_and_mse(y_BD, y_hat_BD, step.total_variance(y_BD))
        gate_BF = pi_gate_BF.relu()
        l1 = (gate_BF * self.W_dec_FO.norm(dim=1)).sum(-1).float().mean()
        y_via_gate_BD = gate_BF @ self.W_dec_FO.detach() + self.b_dec_O.detach()
        _, aux_mse = fvu_and_mse(y_BD, y_via_gate_BD)
        coef = self.cfg.l1_coef * linear_warmup(step.progress, self.cfg.sparsity_warmup_fraction)
        loss = mse + coef * l1 + aux_mse
        active_BF = acts_BF != 0
        return TrainStepOutput(
            loss=loss, y_hat_BO=y_hat_BD.detach(), fired_F=active_BF.any(0), l0=active_BF.sum().item() / x_BD.shape[0],
            losses={"fvu": fvu.item(), "mse": mse.item(), "l1": l1.item(), "aux_mse": aux_mse.item(), "sparsity_coef": coef},
        )

    @torch.no_grad()
    def fold_decoder_norms(self) -> torch.Tensor:
        norms_F = super().fold_decoder_norms()
        self.b_mag_F *= norms_F
        return norms_F

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc_DF, "b_gate": self.b_enc_F, "r_mag": self.r_mag_F, "b_mag": self.b_mag_F,
                "W_dec": self.W_dec_FO, "b_dec": self.b_dec_O}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        copy_named(tensors, self.saelens_tensors())

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        if cfg.get("architecture") != "gated":
            return None
        return {"architecture": "gated", "d_sae": cfg["d_sae"]}
