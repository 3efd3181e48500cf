"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionary prefixes.

Latents are selected as in BatchTopK over the whole dictionary; then every prefix
``[0, width_m)`` (``prefix_fractions`` of d_sae, the last being the whole dictionary) must
reconstruct the target by itself. The loss is the mean over prefixes of their FVU (equal weights;
the paper sums them), plus AuxK. Early latents are pushed towards general, frequent features.
Inference and saving are those of BatchTopK (a JumpReLU SAE with the global threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saes.errors import ConfigError
from saes.sae.base import StepInput, TrainStepOutput, fvu_and_mse
from saes.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from saes.sae.registry import register
from saes.sae.sparse_ops import ragged_decode
from saes.sae.topk import annealed_k


@dataclass
class MatryoshkaBatchTopKConfig(BatchTopKConfig):
    architecture: str = "matryoshka_batchtopk"
    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0])
    """Nested prefix sizes as fractions of d_sae, increasing, ending at 1.0."""


@register("matryoshka_batchtopk")
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    config_class = MatryoshkaBatchTopKConfig
    cfg: MatryoshkaBatchTopKConfig

    def __init__(self, cfg: MatryoshkaBatchTopKConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        fractions = list(cfg.prefix_fractions)
        self.widths = [round(f * self.d_sae) for f in fractions]
        if not fractions or fractions[-1] != 1.0 or any(w <= 0 for w in self.widths) or any(
            a >= b for a, b in zip(self.widths, self.widths[1:])
        ):
            raise ConfigError(
                f"sae.prefix_fractions={fractions} must be strictly increasing fractions of d_sae={self.d_sae} "
                "(each prefix at least one latent), ending at 1.0"
            )

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        x_BD, y_BD = step.x_BD, step.y_BO
        k = annealed_k(self.k, self.cfg.k_start, self.cfg.k_anneal_fraction, step.progress)
        dead_F = self.auxk_dead(step)
        codes = self.batch_codes(x_BD, k, dead_F)
        self.update_threshold(codes.vals_N)
        prefix_fvus = []
        total_var = step.total_variance(y_BD)
        y_hat_BD = self.b_dec_O.expand(x_BD.shape[0], -1)
        zero_D = torch.zeros_like(self.b_dec_O)
        start = 0
        for width in self.widths:
            in_group = (codes.cols_N >= start) & (codes.cols_N < width)
            y_hat_BD = y_hat_BD + ragged_decode(
                codes.rows_N[in_group], codes.cols_N[in_group], codes.coef_N[in_group], self.W_dec_FO, zero_D, x_BD.shape[0]
            )
            prefix_fvus.append(fvu_and_mse(y_BD, y_hat_BD, total_var)[0])
            start = width
        out = self.codes_step_output(x_BD, y_BD, y_hat_BD, torch.stack(prefix_fvus).mean(), codes, dead_F, total_var)
        for width, fvu in zip(self.widths, prefix_fvus):
            out.losses[f"fvu_{width}"] = fvu.item()
        return out
