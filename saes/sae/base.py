"""The SAE base class every variant extends: parameters, encode/decode, folding, checkpoint cfg.

Shapes: B tokens in a batch, D = d_in, F = d_sae (latents), K active latents per token.
Parameters follow the SAELens v6 layout: ``W_enc_DF [D, F]``, ``b_enc_F``, ``W_dec_FD [F, D]``,
``b_dec_D``. Encoders subtract ``b_dec`` from the input (``apply_b_dec_to_input``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class SAEConfig:
    """Keys shared by every variant (``conf/sae/<name>.yaml``)."""

    architecture: str
    """Registered variant name, e.g. ``topk``."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_in, unless ``d_sae`` is given."""
    d_sae: int | None = None
    """Number of latents; overrides ``expansion_factor``."""

    def resolve_d_sae(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae else int(self.expansion_factor * d_in)


@dataclass
class TrainStepOutput:
    """What one training forward returns: the loss to minimise and what to log."""

    loss: torch.Tensor
    """Scalar loss (backpropagated)."""
    x_hat_BD: torch.Tensor
    """Reconstruction of the batch, detached."""
    fired_F: torch.Tensor
    """Bool mask of latents active on at least one token of the batch."""
    l0: float
    """Mean number of active latents per token."""
    losses: dict[str, float] = field(default_factory=dict)
    """Named loss terms for logging (e.g. ``fvu``, ``auxk``)."""


class SAE(nn.Module):
    """A sparse autoencoder ``x -> acts = encode(x) -> x_hat = decode(acts)``."""

    architecture: ClassVar[str]
    config_class: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        self.d_out = d_out or d_in
        self.d_sae = cfg.resolve_d_sae(d_in)
        self.W_enc_DF = nn.Parameter(torch.empty(d_in, self.d_sae))
        self.b_enc_F = nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec_FD = nn.Parameter(torch.empty(self.d_sae, self.d_out))
        self.b_dec_D = nn.Parameter(torch.zeros(self.d_out))

    # -- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None, decoder_norm: float = 1.0) -> None:
        """Random unit-direction decoder rows scaled to ``decoder_norm``; ``W_enc = W_dec^T``."""
        w = torch.randn(self.d_sae, self.d_out, generator=generator)
        w *= decoder_norm / w.norm(dim=1, keepdim=True)
        self.W_dec_FD.copy_(w)
        if self.d_out == self.d_in:
            self.W_enc_DF.copy_(w.T)
        else:  # transcoder: no tied shape, use an independent random encoder of the same scale
            e = torch.randn(self.d_in, self.d_sae, generator=generator)
            self.W_enc_DF.copy_(e * decoder_norm / e.norm(dim=0, keepdim=True))
        self.b_enc_F.zero_()
        self.b_dec_D.zero_()

    # -- inference -------------------------------------------------------------------------
    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[B, F]``."""
        x_in = x_BD - self.b_dec_D if self.d_out == self.d_in else x_BD
        return x_in @ self.W_enc_DF + self.b_enc_F

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense latent activations ``[B, F]`` (zeros off the active set)."""
        raise NotImplementedError

    def decode(self, acts_BF: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[B, D]`` from dense activations."""
        return acts_BF @ self.W_dec_FD + self.b_dec_D

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x_BD``."""
        return self.decode(self.encode(x_BD))

    # -- training --------------------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a variant may give some parameters their own LR (e.g.
        JumpReLU thresholds). The schedule scales every group's ``lr`` by the same factor."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def training_forward(self, x_BD: torch.Tensor, y_BD: torch.Tensor, state: dict[str, Any]) -> TrainStepOutput:
        """Loss on a batch; ``y_BD`` is the target (``x_BD`` itself for an SAE).

        ``state`` carries ``dead_F`` (bool [F], latents that have not fired for
        ``training.dead_tokens`` tokens) and ``progress`` (fraction of training done, in [0, 1]).
        """
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook run after each optimizer step (e.g. renormalise decoder rows)."""

    def before_step(self) -> None:
        """Hook run after backward and before the optimizer step (e.g. project gradients)."""

    # -- checkpoints -------------------------------------------------------------------------
    @torch.no_grad()
    def fold_activation_scale(self, scale_in: float, scale_out: float) -> None:
        """Fold a training-time input scaling ``x * scale_in`` (target ``y * scale_out``) into the
        weights, so the SAE takes raw activations and returns raw reconstructions with the
        same latent activations as before."""
        self.W_enc_DF.mul_(scale_in)
        self.W_dec_FD.div_(scale_out)
        self.b_dec_D.div_(scale_out)  # for an SAE scale_in == scale_out, so (x*s - b) = s*(x - b/s)

    def saelens_cfg(self) -> dict[str, Any]:
        """Architecture-specific top-level keys of a SAELens v6 ``cfg.json``."""
        return {"architecture": self.architecture}

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """``sae.*`` options equivalent to a foreign SAELens ``cfg.json``, or None if this
        variant cannot represent it. Used to load checkpoints saes did not write."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """The variant's config as plain data (stored in checkpoint metadata)."""
        return asdict(self.cfg)
