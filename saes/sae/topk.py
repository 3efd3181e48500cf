"""TopK SAE (Gao et al. 2024): keep the K largest pre-activations per token, with AuxK.

Decoder norm: unit-norm constraint (gradient projected, rows renormalised after each step).
With ``decoder_norm_selection`` (Llama Scope; SAELens's ``rescale_acts_by_decoder_norm``) the
decoder is left free and latents are selected on ``pre_act * ||W_dec row||``; the latent value is
that product and decoding divides it back out. Saving folds the norms into the encoder, which
gives a plain TopK SAE with identical outputs.
AuxK: the residual ``y - y_hat`` is reconstructed from the ``aux_k`` largest pre-activations
among dead latents, and that FVU, times ``aux_coef``, is added to the loss.
k annealing: with ``k_start``, k falls linearly from ``k_start`` to ``k`` over the first
``k_anneal_fraction`` of training.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from saes.errors import ConfigError
from saes.sae.base import SAE, SAEConfig, StepInput, TrainStepOutput, fvu_and_mse
from saes.sae.registry import register
from saes.sae.sparse_ops import auxk_select, decode_selected, encode_selected, pre_acts, sparse_decode, topk_select


@dataclass
class AuxCodes:
    """AuxK's selection: ``vals_N`` at ``(rows_N, dead_idx_S[pos_N])``, ``k_aux`` per token."""

    rows_N: torch.Tensor
    pos_N: torch.Tensor
    vals_N: torch.Tensor
    dead_idx_S: torch.Tensor
    n_rows: int

    def selection(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.rows_N, self.pos_N, self.vals_N, self.dead_idx_S


@dataclass
class TopKConfig(SAEConfig):
    architecture: str = "topk"
    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Latents used by AuxK; None: d_in / 2."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    decoder_norm_selection: bool = False
    """Select on pre-activation x decoder row norm; decoder rows unconstrained (Llama Scope)."""
    k_start: int | None = None
    """Anneal k from this value down to ``k``; None: no annealing."""
    k_anneal_fraction: float = 0.0
    """Fraction of training over which k falls linearly from ``k_start`` to ``k``."""


def annealed_k(k: int, k_start: int | None, fraction: float, progress: float) -> int:
    """k for this point of training (``k_start`` -> ``k`` linearly over ``fraction``)."""
    if k_start is None or progress >= fraction:
        return k
    return int(round(k_start + (k - k_start) * progress / fraction))


def check_k_options(cfg: Any, d_sae: int) -> None:
    """Validate ``k``, ``k_start`` and ``k_anneal_fraction`` (shared with BatchTopK)."""
    if not 0 < cfg.k <= d_sae:
        raise ConfigError(f"sae.k={cfg.k} must be in [1, d_sae={d_sae}]")
    if cfg.k_start is not None:
        if not cfg.k <= cfg.k_start <= d_sae:
            raise ConfigError(f"sae.k_start={cfg.k_start} must be in [k={cfg.k}, d_sae={d_sae}]")
        if not 0 < cfg.k_anneal_fraction <= 1:
            raise ConfigError(f"sae.k_anneal_fraction={cfg.k_anneal_fraction} must be in (0, 1] when sae.k_start is set")


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        check_k_options(cfg, self.d_sae)
        self.k = cfg.k
        self.aux_k = cfg.aux_k or max(1, d_in // 2)
        self.unit_norm_decoder = not cfg.decoder_norm_selection

    def selection_scale(self) -> torch.Tensor | None:
        """Per-latent factor applied before selection (decoder row norms), or None."""
        return self.W_dec_FO.norm(dim=1) if self.cfg.decoder_norm_selection else None

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_acts(x_BD)
        scale_F = self.selection_scale()
        if scale_F is not None:
            pre_BF = pre_BF * scale_F
        vals_BK, idx_BK = pre_BF.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre_BF).scatter_(1, idx_BK, vals_BK.clamp_min(0))

    def decode(self, acts_BF: torch.Tensor) -> torch.Tensor:
        scale_F = self.selection_scale()
        return super().decode(acts_BF if scale_F is None else acts_BF / scale_F)

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        x_BD, y_BD = step.x_BD, step.y_BO
        k = annealed_k(self.k, self.cfg.k_start, self.cfg.k_anneal_fraction, step.progress)
        scale_F = self.selection_scale()
        dead_F = self.auxk_dead(step)
        total_var = step.total_variance(y_BD)
        aux = err_hat_BD = None
        if scale_F is None:  # the fast path: one shared pre-activation matmul, sparse backward
            x_c_BD, pre_BF = pre_acts(x_BD, self.W_enc_DF, self.b_enc_F, self.b_dec_in())
            rows_N, cols_N, vals_N = topk_select(pre_BF, k, x_BD.dtype)
            if dead_F is not None:  # AuxK selects from the same pre-activations (dead latents only)
                aux = self.auxk_codes(pre_BF, dead_F, x_BD.dtype)
            del pre_BF  # no [B, F] buffer outlives the selection
            # TopK and AuxK codes go through one encode and one decode (one backward each)
            encoded = encode_selected(x_c_BD, self.W_enc_DF, self.b_enc_F, self.b_dec_in(), rows_N, cols_N, vals_N,
                                      aux=aux.selection() if aux is not None else None)
            if aux is not None:
                vals_N, aux.vals_N = encoded
                y_hat_BO, err_hat_BD = decode_selected(rows_N, cols_N, vals_N, self.W_dec_FO, x_BD.shape[0], aux=aux.selection())
            else:
                vals_N = encoded
                y_hat_BO = decode_selected(rows_N, cols_N, vals_N, self.W_dec_FO, x_BD.shape[0])
            y_hat_BO = y_hat_BO + self.b_dec_O
        else:  # selection on pre * ||W_dec||: dense autograd through the norms
            vals_BK, idx_BK = (self.pre_acts(x_BD) * scale_F).topk(k, dim=1, sorted=False)
            vals_BK = vals_BK.clamp_min(0)
            y_hat_BO = sparse_decode(idx_BK, vals_BK / scale_F[idx_BK], self.W_dec_FO, self.b_dec_O)
            vals_N, cols_N = vals_BK.reshape(-1), idx_BK.reshape(-1)
        fvu, _ = fvu_and_mse(y_BD, y_hat_BO, total_var)
        losses = {"fvu": fvu.item()}
        if self.cfg.k_start is not None:
            losses["k"] = float(k)
        return self.sparse_step_output(x_BD, y_BD, y_hat_BO, fvu, cols_N, vals_N, losses, dead_F, total_var, aux, err_hat_BD)

    def auxk_dead(self, step: StepInput) -> torch.Tensor | None:
        """``step.dead_F`` when this step has an AuxK term (some latent is dead), else None."""
        dead_F = step.dead_F
        return dead_F if dead_F is not None and self.cfg.aux_coef > 0 and bool(dead_F.any()) else None

    def sparse_step_output(
        self, x_BD: torch.Tensor, y_BD: torch.Tensor, y_hat_BO: torch.Tensor, recon_loss: torch.Tensor,
        cols_N: torch.Tensor, vals_N: torch.Tensor, losses: dict[str, float], dead_F: torch.Tensor | None,
        total_var: torch.Tensor, aux: AuxCodes | None = None, err_hat_BD: torch.Tensor | None = None,
    ) -> TrainStepOutput:
        """``recon_loss`` + AuxK (when ``dead_F`` is given; ``total_var``: the batch's, see
        ``StepInput.total_variance``), the firing mask and L0 of the selected codes ``(cols_N,
        vals_N)``; ``aux``/``err_hat_BD``: AuxK's codes (and their decode) if made."""
        loss = recon_loss
        if dead_F is not None:
            err_BD = (y_BD - y_hat_BO).detach()
            if aux is not None:
                auxk = self.auxk_from_codes(aux, err_BD, total_var, err_hat_BD)
            else:
                auxk = self._auxk_loss(x_BD, err_BD, dead_F, total_var, self.selection_scale())
            loss = loss + self.cfg.aux_coef * auxk
            losses["auxk"] = auxk.item()
        active_N = vals_N > 0
        fired_F = torch.zeros(self.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[cols_N[active_N]] = True
        return TrainStepOutput(loss=loss, y_hat_BO=y_hat_BO.detach(), fired_F=fired_F,
                               l0=active_N.sum().item() / x_BD.shape[0], losses=losses)

    def auxk_codes(self, pre_BF: torch.Tensor, dead_F: torch.Tensor, dtype: torch.dtype) -> AuxCodes:
        """AuxK's selection (no gradient yet): the top ``aux_k`` dead latents per token from the
        step's pre-activations; ``encode_selected(..., aux=codes.selection())`` encodes it."""
        dead_idx = dead_F.nonzero().squeeze(1)
        rows, pos, vals = auxk_select(pre_BF, dead_idx, min(self.aux_k, dead_idx.numel()), dtype)
        return AuxCodes(rows, pos, vals, dead_idx, pre_BF.shape[0])

    def auxk_from_codes(self, aux: AuxCodes, err_BD: torch.Tensor, total_var: torch.Tensor,
                        err_hat_BD: torch.Tensor | None = None) -> torch.Tensor:
        """The AuxK loss of encoded ``auxk_codes``; ``err_hat_BD``: their decode if already done."""
        if err_hat_BD is None:
            err_hat_BD = decode_selected(*aux.selection()[:3], self.W_dec_FO, aux.n_rows, aux.dead_idx_S)
        return self._auxk_fvu(err_hat_BD, err_BD, aux.dead_idx_S.numel(), total_var)

    def _auxk_loss(
        self, x_BD: torch.Tensor, err_BD: torch.Tensor, dead_F: torch.Tensor, total_var: torch.Tensor,
        scale_F: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The AuxK loss by dense autograd (the path with decoder-norm selection)."""
        dead_idx = dead_F.nonzero().squeeze(1)
        k_aux = min(self.aux_k, dead_idx.numel())
        pre_BN = self.centered(x_BD) @ self.W_enc_DF[:, dead_idx] + self.b_enc_F[dead_idx]
        if scale_F is not None:
            pre_BN = pre_BN * scale_F[dead_idx]
        vals_BK, pos_BK = pre_BN.topk(k_aux, dim=1, sorted=False)
        vals_BK = vals_BK.clamp_min(0)
        if scale_F is not None:
            vals_BK = vals_BK / scale_F[dead_idx][pos_BK]
        err_hat_BD = sparse_decode(dead_idx[pos_BK], vals_BK, self.W_dec_FO, torch.zeros_like(self.b_dec_O))
        return self._auxk_fvu(err_hat_BD, err_BD, dead_idx.numel(), total_var)

    def _auxk_fvu(self, err_hat_BD: torch.Tensor, err_BD: torch.Tensor, n_dead: int, total_var: torch.Tensor) -> torch.Tensor:
        """FVU of the residual ``err_BD`` reconstructed by the dead latents (``err_hat_BD``), scaled
        down when fewer than ``aux_k`` latents are dead (as in sparsify)."""
        scale = min(n_dead / self.aux_k, 1.0)
        return scale * (err_hat_BD.float() - err_BD.float()).pow(2).sum() / total_var

    @torch.no_grad()
    def fold_decoder_norms(self) -> torch.Tensor:
        if not self.cfg.decoder_norm_selection:
            raise ValueError("folding decoder norms into a TopK SAE without decoder_norm_selection would change "
                             "the selection of its top-k latents")
        return super().fold_decoder_norms()

    def inference_form(self) -> SAE:
        """With ``decoder_norm_selection``: a copy with the norms folded in (a plain TopK SAE)."""
        if not self.cfg.decoder_norm_selection:
            return self
        out = copy.deepcopy(self)
        out.fold_decoder_norms()
        out.cfg = dataclasses.replace(out.cfg, decoder_norm_selection=False)
        out.unit_norm_decoder = True
        return out

    def saelens_cfg(self) -> dict[str, Any]:
        return {"architecture": "topk", "k": self.k, "rescale_acts_by_decoder_norm": self.cfg.decoder_norm_selection}

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        if cfg.get("architecture") != "topk":
            return None
        return {"architecture": "topk", "d_sae": cfg["d_sae"], "k": cfg["k"],
                "decoder_norm_selection": bool(cfg.get("rescale_acts_by_decoder_norm", False))}
