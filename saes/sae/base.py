"""The dictionary interface every variant implements, and the SAE base class the variants extend.

Shapes: B tokens in a batch, D = d_in, O = d_out (= D for an SAE), F = d_sae (latents), K active
latents per token. Parameters follow the SAELens v6 layout: ``W_enc_DF [D, F]``, ``b_enc_F``,
``W_dec_FO [F, O]``, ``b_dec_O``. SAEs subtract ``b_dec`` from the input
(``apply_b_dec_to_input``); transcoders (``d_out`` given: read one hook, reconstruct another) do not.

The training interface is multi-site: a run member names a tuple of input hooks and a tuple of
output hooks; each step hands the dictionary a ``StepInput`` (normalized activations by hook, the
training progress, the dead-latent mask) and gets back a ``TrainStepOutput`` (the loss and what to
log). A dictionary never sees the optimizer: it returns the latents whose optimizer state must be
reset (``reset_latents``) and declares which parameter axes index latents (``latent_axes``); the
trainer does the rest. The variants here read one hook and write one (``StepInput.x_BD``/``y_BO``).

Decoder norms: a variant either keeps decoder rows at unit norm (``unit_norm_decoder``: the
gradient parallel to each row is removed before the step and rows are renormalised after it) or
weights its sparsity penalty by the row norms and leaves them free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from saes.errors import ConfigError


@dataclass
class SAEConfig:
    """Keys shared by every variant (``conf/sae/<name>.yaml``)."""

    architecture: str
    """Registered variant name, e.g. ``topk``."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_in, unless ``d_sae`` is given."""
    d_sae: int | None = None
    """Number of latents; overrides ``expansion_factor``."""
    decoder_init_norm: float = 1.0
    """Norm of each decoder row at initialisation (random directions)."""
    tied_init: bool = True
    """Initialise ``W_enc = W_dec^T`` (SAEs only; a transcoder's encoder is drawn independently)."""

    def resolve_d_sae(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae else int(self.expansion_factor * d_in)


@dataclass
class StepInput:
    """What one training step gives a dictionary: activations already multiplied by their
    normalization scales, by hook, in the member's hook order."""

    inputs: dict[str, torch.Tensor]
    """``{hook: [B, D_hook]}`` read by the encoder."""
    targets: dict[str, torch.Tensor]
    """``{hook: [B, O_hook]}`` to reconstruct (the same tensors as ``inputs`` for an SAE)."""
    dead_F: torch.Tensor | None = None
    """Bool ``[F]``: latents that have not fired for ``training.dead_tokens`` tokens."""
    progress: float = 1.0
    """Fraction of training done before this step, in [0, 1]."""
    tokens: int = 0
    """Training tokens seen before this step."""
    batch_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Data-parallel steps (``distributed=data``: each of ``ranks`` ranks holds an equal share of
    the batch): sums a tensor over the ranks. None in one process."""
    ranks: int = 1

    def total_variance(self, y_BD: torch.Tensor) -> torch.Tensor:
        """``sum ||y - mean(y)||^2`` over the batch (float32 or float64), the denominator of FVU losses. In a
        data-parallel step: the global batch's, divided by ``ranks``, so that the average of the
        ranks' gradients is the gradient of the global batch's loss."""
        if self.batch_sum is None:
            y = y_BD if y_BD.dtype == torch.float64 else y_BD.float()
            return (y - y.mean(0)).pow(2).sum()
        y64 = y_BD.double()
        n = torch.tensor([y_BD.shape[0]], dtype=torch.float64, device=y_BD.device)
        stats = self.batch_sum(torch.cat([y64.sum(0), y64.pow(2).sum().reshape(1), n]))
        total_sum_D, total_sq, rows = stats[:-2], stats[-2], stats[-1]
        return ((total_sq - total_sum_D.pow(2).sum() / rows) / self.ranks).float()

    @classmethod
    def single(cls, x_BD: torch.Tensor, y_BO: torch.Tensor | None = None, **fields: Any) -> "StepInput":
        """One input hook (``x``) and one target (``y``, default ``x`` itself: an SAE)."""
        return cls({"x": x_BD}, {"x" if y_BO is None else "y": x_BD if y_BO is None else y_BO}, **fields)

    @property
    def x_BD(self) -> torch.Tensor:
        """The only input of a single-site dictionary."""
        return _only(self.inputs, "input")

    @property
    def y_BO(self) -> torch.Tensor:
        """The only target of a single-site dictionary."""
        return _only(self.targets, "target")


def _only(acts: dict[str, torch.Tensor], role: str) -> torch.Tensor:
    if len(acts) != 1:
        raise ValueError(f"a single-site dictionary got {len(acts)} {role} hooks ({sorted(acts)}); it reads and writes one")
    return next(iter(acts.values()))


@dataclass
class TrainStepOutput:
    """What one training forward returns: the loss to minimise and what to log."""

    loss: torch.Tensor
    """Scalar loss (backpropagated)."""
    y_hat_BO: torch.Tensor
    """Reconstruction of the batch, detached."""
    fired_F: torch.Tensor
    """Bool mask of latents active on at least one token of the batch."""
    l0: float
    """Mean number of active latents per token."""
    losses: dict[str, float] = field(default_factory=dict)
    """Named loss terms for logging; ``fvu`` (fraction of variance unexplained) always."""
    reset_latents: torch.Tensor | None = None
    """Latent indices re-initialised this step (e.g. resampled): the trainer zeroes their optimizer
    state along every ``latent_axes`` entry before the optimizer step."""


def fvu_and_mse(y_BD: torch.Tensor, y_hat_BD: torch.Tensor, total_var: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(FVU, MSE)`` in float32: FVU = sum||y - y_hat||^2 / sum||y - mean(y)||^2 over the batch
    (``total_var``: that denominator, e.g. ``StepInput.total_variance``); MSE = mean over tokens
    of ||y - y_hat||^2 (summed over dimensions)."""
    err = (y_BD.float() - y_hat_BD.float()).pow(2).sum()
    total_var = (y_BD.float() - y_BD.float().mean(0)).pow(2).sum() if total_var is None else total_var.float()
    return err / total_var, err / y_BD.shape[0]


def linear_warmup(progress: float, fraction: float) -> float:
    """Factor rising linearly from 0 to 1 over the first ``fraction`` of training."""
    return 1.0 if fraction <= 0 else min(1.0, progress / fraction)


@torch.no_grad()
def copy_named(tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors[name]`` into each target; a missing name raises ``KeyError(name)``, a shape
    mismatch ``ValueError`` naming it (the checkpoint loader adds the file name)."""
    for name, param in targets.items():
        if name not in tensors:
            raise KeyError(name)
        if tensors[name].shape != param.shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, the config implies {tuple(param.shape)}")
        param.copy_(tensors[name])


class SAE(nn.Module):
    """A sparse autoencoder ``x -> acts = encode(x) -> x_hat = decode(acts)``."""

    architecture: ClassVar[str]
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm while training (set False by penalty-weighted variants)."""

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        self.is_transcoder = d_out is not None
        self.d_out = d_in if d_out is None else d_out
        self.apply_b_dec_to_input = not self.is_transcoder
        """Subtract ``b_dec`` from the input before encoding (SAELens's ``apply_b_dec_to_input``)."""
        self.d_sae = cfg.resolve_d_sae(d_in)
        if self.d_sae <= 0:
            raise ConfigError(f"sae.d_sae={self.d_sae} must be positive")
        self.W_enc_DF = nn.Parameter(torch.empty(d_in, self.d_sae))
        self.b_enc_F = nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec_FO = nn.Parameter(torch.empty(self.d_sae, self.d_out))
        self.b_dec_O = nn.Parameter(torch.zeros(self.d_out))

    # -- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None, decoder_norm: float | None = None) -> None:
        """Random decoder directions scaled to ``decoder_norm`` (default ``sae.decoder_init_norm``);
        ``W_enc = W_dec^T`` for SAEs with ``sae.tied_init``, else an independent random encoder
        with unit-norm columns scaled the same way."""
        norm = self.cfg.decoder_init_norm if decoder_norm is None else decoder_norm
        w = torch.randn(self.d_sae, self.d_out, generator=generator)
        w *= norm / w.norm(dim=1, keepdim=True)
        self.W_dec_FO.copy_(w)
        if not self.is_transcoder and self.cfg.tied_init:
            self.W_enc_DF.copy_(w.T)
        else:
            e = torch.randn(self.d_in, self.d_sae, generator=generator)
            self.W_enc_DF.copy_(e * norm / e.norm(dim=0, keepdim=True))
        self.b_enc_F.zero_()
        self.b_dec_O.zero_()

    # -- inference -------------------------------------------------------------------------
    def b_dec_in(self) -> torch.Tensor | None:
        """``b_dec`` when it is subtracted from the input, else None."""
        return self.b_dec_O if self.apply_b_dec_to_input else None

    def centered(self, x_BD: torch.Tensor) -> torch.Tensor:
        """The encoder input: ``x - b_dec`` for SAEs, ``x`` for transcoders."""
        return x_BD - self.b_dec_O if self.apply_b_dec_to_input else x_BD

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[B, F]``."""
        return self.centered(x_BD) @ self.W_enc_DF + self.b_enc_F

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense latent activations ``[B, F]`` (zeros off the active set)."""
        raise NotImplementedError

    def decode(self, acts_BF: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[B, O]`` from dense activations."""
        return acts_BF @ self.W_dec_FO + self.b_dec_O

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x_BD`` (of the output hook for a transcoder)."""
        return self.decode(self.encode(x_BD))

    # -- training --------------------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a variant may give some parameters their own LR (e.g.
        JumpReLU thresholds). The schedule scales every group's ``lr`` by the same factor."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def training_forward(self, step: StepInput) -> TrainStepOutput:
        """Loss on a batch (see ``StepInput``); the target is ``step.y_BO`` (the input for an SAE)."""
        raise NotImplementedError

    def latent_axes(self) -> dict[str, int]:
        """``{parameter name: axis}`` of the parameters indexed by latent (their optimizer state is
        reset with ``TrainStepOutput.reset_latents``)."""
        return {"W_enc_DF": 1, "b_enc_F": 0, "W_dec_FO": 0}

    def reconstruct(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstructions of every output hook from the activations of every input hook (raw
        activations, in the member's hook order); one in, one out for the variants here."""
        (x_BD,) = inputs
        return [self(x_BD)]

    @torch.no_grad()
    def before_step(self) -> None:
        """After backward, before the optimizer step: with ``unit_norm_decoder``, remove the
        gradient component parallel to each (unit) decoder row."""
        g = self.W_dec_FO.grad
        if self.unit_norm_decoder and g is not None:
            w = self.W_dec_FO
            g.addcmul_(w, torch.linalg.vecdot(g, w, dim=1).unsqueeze(1), value=-1)  # g -= <g, w> w, no [F, D] temporaries

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimizer step: with ``unit_norm_decoder``, renormalise decoder rows."""
        if self.unit_norm_decoder:
            self.W_dec_FO /= self.W_dec_FO.norm(dim=1, keepdim=True).clamp_min(1e-8)

    # -- checkpoints -------------------------------------------------------------------------
    def inference_form(self) -> "SAE":
        """The SAE as it is evaluated and saved: ``self`` when training and inference agree, else
        a new module (``self`` is left unchanged). BatchTopK variants become a JumpReLU SAE here;
        decoder-norm-aware TopK gets its norms folded into the encoder."""
        return self

    @torch.no_grad()
    def fold_decoder_norms(self) -> torch.Tensor:
        """Rescale so decoder rows have unit norm without changing reconstructions: latent ``i``
        is multiplied by ``||W_dec[i]||`` (encoder column and bias scaled alike). Returns the norms."""
        norms_F = self.W_dec_FO.norm(dim=1).clamp_min(1e-8)
        self.W_dec_FO /= norms_F[:, None]
        self.W_enc_DF *= norms_F
        self.b_enc_F *= norms_F
        return norms_F

    @torch.no_grad()
    def fold_activation_scales(self, scales_in: list[float], scales_out: list[float]) -> None:
        """Fold per-hook training-time input and target scales (in hook order) into the weights."""
        (scale_in,), (scale_out,) = scales_in, scales_out
        self.fold_activation_scale(scale_in, scale_out)

    @torch.no_grad()
    def fold_activation_scale(self, scale_in: float, scale_out: float) -> None:
        """Fold a training-time input scaling ``x * scale_in`` (target ``y * scale_out``) into the
        weights, so the SAE takes raw activations and returns raw reconstructions with the
        same latent activations as before."""
        self.W_enc_DF.mul_(scale_in)
        self.W_dec_FO.div_(scale_out)
        # SAE: scale_in == scale_out, so (x*s - b) = s*(x - b/s); transcoders do not centre
        self.b_dec_O.div_(scale_out)

    def saelens_architecture(self) -> str:
        """SAELens v6 ``architecture`` of the saved (inference-form) SAE."""
        return self.architecture

    def saelens_cfg(self) -> dict[str, Any]:
        """Architecture-specific top-level keys of a SAELens v6 ``cfg.json``."""
        return {"architecture": self.saelens_architecture()}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors of ``sae_weights.safetensors`` by their SAELens names."""
        return {"W_enc": self.W_enc_DF, "b_enc": self.b_enc_F, "W_dec": self.W_dec_FO, "b_dec": self.b_dec_O}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the parameters from SAELens-named tensors (see ``copy_named`` for errors)."""
        copy_named(tensors, SAE.saelens_tensors(self))

    @classmethod
    def options_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """``sae.*`` options equivalent to a foreign SAELens ``cfg.json``, or None if this
        variant cannot represent it. Used to load checkpoints saes did not write."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """The variant's config as plain data (stored in checkpoint metadata)."""
        return asdict(self.cfg)

    def extra_repr(self) -> str:
        kind = f"transcoder d_out={self.d_out}" if self.is_transcoder else "sae"
        return f"{self.architecture}: d_in={self.d_in}, d_sae={self.d_sae}, {kind}"
