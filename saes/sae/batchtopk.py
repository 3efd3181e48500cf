"""BatchTopK SAE (Bussmann et al. 2024): keep the k * B largest pre-activations of a batch.

Training selects over the whole batch (per-token L0 varies, mean k) with the sparse backward of
``saes.sae.sparse_ops``, plus AuxK as in TopK. A global threshold is estimated while training as
an exponential moving average (rate ``threshold_rate``) of the smallest selected activation per
batch; inference (``encode``) keeps activations above it, so it does not depend on the batch.
Saved as a JumpReLU SAE with that threshold for every latent. Decoder norm: unit-norm constraint,
or ``decoder_norm_selection`` as in TopK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from saes.errors import ConfigError
from saes.sae.base import SAE, StepInput, TrainStepOutput, fvu_and_mse
from saes.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from saes.sae.registry import register
from saes.sae.sparse_ops import batch_topk_select, encode_selected, pre_acts, ragged_decode
from saes.sae.topk import AuxCodes, TopKConfig, TopKSAE, annealed_k


@dataclass
class BatchTopKConfig(TopKConfig):
    architecture: str = "batchtopk"
    threshold_rate: float = 0.05
    """Weight of each batch in the moving average that estimates the inference threshold. The
    smallest selected activation falls steadily while the SAE trains, so a slow average lags and
    the inference L0 falls short of k (measured: docs/quality.md)."""


@dataclass
class SparseCodes:
    """Ragged latent codes of a batch, sorted by token: ``vals_N`` are the (selection-scale)
    activations, ``coef_N`` what multiplies the decoder rows (``vals / ||W_dec||`` with
    ``decoder_norm_selection``, else ``vals``)."""

    rows_N: torch.Tensor
    cols_N: torch.Tensor
    vals_N: torch.Tensor
    coef_N: torch.Tensor
    aux: AuxCodes | None = None
    """AuxK's codes, selected from the same pre-activations (fast path only)."""


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        if not 0 < cfg.threshold_rate <= 1:
            raise ConfigError(f"sae.threshold_rate={cfg.threshold_rate} must be in (0, 1]")
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_acts(x_BD)
        scale_F = self.selection_scale()
        if scale_F is not None:
            pre_BF = pre_BF * scale_F
        return pre_BF * (pre_BF > self.threshold.to(pre_BF.dtype))

    def batch_codes(self, x_BD: torch.Tensor, k: int, dead_F: torch.Tensor | None = None) -> SparseCodes:
        """The top ``k * B`` activations of the batch (with AuxK's codes when ``dead_F`` is given
        and the fast path applies)."""
        n_keep = k * x_BD.shape[0]
        scale_F = self.selection_scale()
        if scale_F is None:
            x_c_BD, pre_BF = pre_acts(x_BD, self.W_enc_DF, self.b_enc_F, self.b_dec_in())
            rows, cols, vals = batch_topk_select(pre_BF, n_keep, x_BD.dtype)
            aux = self.auxk_codes(pre_BF, dead_F, x_BD.dtype) if dead_F is not None else None
            del pre_BF
            encoded = encode_selected(x_c_BD, self.W_enc_DF, self.b_enc_F, self.b_dec_in(), rows, cols, vals,
                                      aux=aux.selection() if aux is not None else None)
            if aux is not None:
                vals, aux.vals_N = encoded
            else:
                vals = encoded
            return SparseCodes(rows, cols, vals, vals, aux)
        scaled_BF = self.pre_acts(x_BD) * scale_F
        vals, flat = scaled_BF.view(-1).topk(n_keep, sorted=False)
        flat, order = flat.sort()
        vals = vals[order].clamp_min(0)
        rows, cols = flat // self.d_sae, flat % self.d_sae
        return SparseCodes(rows, cols, vals, vals / scale_F[cols])

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        x_BD, y_BD = step.x_BD, step.y_BO
        k = annealed_k(self.k, self.cfg.k_start, self.cfg.k_anneal_fraction, step.progress)
        dead_F = self.auxk_dead(step)
        codes = self.batch_codes(x_BD, k, dead_F)
        self.update_threshold(codes.vals_N)
        y_hat_BO = ragged_decode(codes.rows_N, codes.cols_N, codes.coef_N, self.W_dec_FO, self.b_dec_O, x_BD.shape[0])
        total_var = step.total_variance(y_BD)
        return self.codes_step_output(x_BD, y_BD, y_hat_BO, fvu_and_mse(y_BD, y_hat_BO, total_var)[0], codes, dead_F, total_var)

    def codes_step_output(self, x_BD: torch.Tensor, y_BD: torch.Tensor, y_hat_BO: torch.Tensor, recon_loss: torch.Tensor,
                          codes: SparseCodes, dead_F: torch.Tensor | None, total_var: torch.Tensor) -> TrainStepOutput:
        """``recon_loss`` + AuxK, with the logs and firing mask of ``codes`` (``total_var``: the
        batch's, see ``StepInput.total_variance``)."""
        losses = {"fvu": fvu_and_mse(y_BD, y_hat_BO.detach(), total_var)[0].item(), "threshold": float(self.threshold)}
        return self.sparse_step_output(x_BD, y_BD, y_hat_BO, recon_loss, codes.cols_N, codes.vals_N, losses, dead_F,
                                       total_var, codes.aux)

    @torch.no_grad()
    def update_threshold(self, vals_N: torch.Tensor) -> None:
        """Moving average of the smallest positive selected activation (the first batch sets it)."""
        positive = vals_N[vals_N > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        rate = 1.0 if int(self.threshold_updates) == 0 else self.cfg.threshold_rate
        self.threshold.mul_(1 - rate).add_(rate * smallest)
        self.threshold_updates += 1

    def inference_form(self) -> SAE:
        """A new JumpReLU SAE with the global threshold on every latent (decoder norms folded)."""
        src = super().inference_form()  # a copy with folded norms under decoder_norm_selection
        cfg = JumpReLUConfig(d_sae=self.d_sae, decoder_init_norm=self.cfg.decoder_init_norm, tied_init=self.cfg.tied_init)
        out = JumpReLUSAE(cfg, self.d_in, self.d_out if self.is_transcoder else None).to(self.W_dec_FO)
        out.apply_b_dec_to_input = self.apply_b_dec_to_input
        threshold = float(self.threshold)
        with torch.no_grad():
            for name in ("W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O"):
                getattr(out, name).copy_(getattr(src, name))
            out.log_threshold_F.fill_(math.log(threshold) if threshold > 0 else -math.inf)
        return out

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        return None  # SAELens saves BatchTopK SAEs as JumpReLU
