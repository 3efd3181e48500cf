"""One dictionary's optimisation: normalization, optimizer, schedule, dead-latent tracking.

The trainer owns everything that touches optimizer state: the dictionary returns losses (and the
latents to reset, ``TrainStepOutput.reset_latents``) and never sees the optimizer."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from saes.config import AutocastDType, BDecInit
from saes.activations.stream import Activations
from saes.distributed.sync import StepSync
from saes.sae.base import SAE, StepInput, TrainStepOutput
from saes.training.schedules import lr_factor

AUTOCAST_DTYPES = {AutocastDType.bfloat16: torch.bfloat16, AutocastDType.float16: torch.float16}


def activation_scale(x_ND: torch.Tensor) -> float:
    """Factor that makes the mean row norm of ``x_ND`` equal sqrt(D)."""
    return math.sqrt(x_ND.shape[1]) / x_ND.norm(dim=1).mean().item()


def geometric_median(x_ND: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm for the point minimising the sum of Euclidean distances."""
    median = x_ND.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x_ND - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x_ND).sum(0) / weights.sum()
        if (new - median).norm() < eps * median.norm().clamp_min(1.0):
            return new
        median = new
    return median


class SAETrainer:
    """Trains one dictionary on batches of raw activations ``{hook: [B, D]}``.

    It reads ``hooks_in`` and reconstructs ``hooks_out`` (default: ``hooks_in``, an SAE). Each
    hook's activations are multiplied by its dataset-wise normalization scale (``scales``) before
    the dictionary sees them; ``folded_copy`` returns a dictionary that takes raw activations.
    """

    def __init__(self, sae: SAE, optimizer_cfg: Any, training_cfg: Any, total_tokens: int,
                 hooks_in: Sequence[str] = ("x",), hooks_out: Sequence[str] | None = None, sync: StepSync | None = None):
        self.sae = sae
        self.sync = sync or StepSync()
        """What each step shares with other ranks (``saes.distributed.sync``; nothing in one process)."""
        self.hooks_in = tuple(hooks_in)
        self.hooks_out = tuple(hooks_out) if hooks_out else self.hooks_in
        self.reconstructs_input = self.hooks_out == self.hooks_in
        """An SAE: the targets are the (normalized) inputs themselves."""
        self.training_cfg = training_cfg
        self.optimizer_cfg = optimizer_cfg
        self.total_steps = max(1, total_tokens // training_cfg.batch_size)
        self.warmup_steps = max(1, int(optimizer_cfg.warmup_fraction * self.total_steps))
        device = sae.W_dec_FO.device
        groups = sae.param_groups(optimizer_cfg.lr)
        for group in groups:
            group["base_lr"] = group["lr"]
        # fused Adam (one kernel per parameter; CPU and CUDA since torch 2.4), foreach elsewhere
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(
            groups,
            betas=tuple(optimizer_cfg.betas),
            eps=optimizer_cfg.eps,
            foreach=not fused,
            fused=fused,
        )
        self.step_count = 0
        self.tokens = 0
        self.scales: dict[str, float] = dict.fromkeys((*self.hooks_in, *self.hooks_out), 1.0)
        self.tokens_since_fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=device)

    @torch.no_grad()
    def initialize_from_data(self, sample: Activations, generator: torch.Generator) -> None:
        """Estimate the normalization scales and set b_dec from a sample of raw activations."""
        if self.training_cfg.normalize_activations:
            self.scales = {hook: activation_scale(sample[hook]) for hook in self.scales}
        self.sae.initialize(generator=generator)
        (hook_out,) = self.hooks_out  # the variants here reconstruct one hook
        y = sample[hook_out] * self.scales[hook_out]
        init = BDecInit(self.training_cfg.b_dec_init)
        if init == BDecInit.mean:
            self.sae.b_dec_O.copy_(y.mean(0))
        elif init == BDecInit.geometric_median:
            self.sae.b_dec_O.copy_(geometric_median(y))

    @property
    def scale_in(self) -> float:
        """The normalization scale of the (only) input hook."""
        return self.scales[self.hooks_in[0]]

    def dead_mask(self) -> torch.Tensor:
        """Latents that have not fired for ``training.dead_tokens`` tokens."""
        return self.tokens_since_fired_F >= self.training_cfg.dead_tokens

    def step(self, batch: Activations) -> TrainStepOutput:
        """One optimizer step on a batch of raw activations (holding at least this trainer's hooks)."""
        factor = lr_factor(
            self.step_count, self.total_steps, self.warmup_steps, self.optimizer_cfg.schedule, self.optimizer_cfg.final_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        inputs = {hook: batch[hook] * self.scales[hook] for hook in self.hooks_in}
        targets = inputs if self.reconstructs_input else {hook: batch[hook] * self.scales[hook] for hook in self.hooks_out}
        n_rows = self.sync.rows(batch[self.hooks_in[0]].shape[0])
        step = StepInput(inputs, targets, dead_F=self.dead_mask(), progress=self.step_count / self.total_steps, tokens=self.tokens,
                         batch_sum=self.sync.batch_sum, ranks=self.sync.ranks)
        with self.autocast(batch[self.hooks_in[0]].device.type):
            out = self.sae.training_forward(step)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sync.gradients(self.sae)
        if out.reset_latents is not None:
            self.sync.after_reset(self.sae)
            self.reset_optimizer_state(out.reset_latents)
        self.sae.before_step()
        if self.optimizer_cfg.grad_clip:
            self.sync.clip(self.sae, self.optimizer_cfg.grad_clip)
        self.optimizer.step()
        self.sae.after_step()
        self.sync.after_step(self.sae)
        self.tokens_since_fired_F += n_rows
        self.tokens_since_fired_F[self.sync.fired(out.fired_F)] = 0
        self.step_count += 1
        self.tokens += n_rows
        return out

    @torch.no_grad()
    def reset_optimizer_state(self, latents: torch.Tensor) -> None:
        """Zero the optimizer moments of ``latents`` in every parameter the dictionary indexes by
        latent (``latent_axes``), e.g. after resampling them."""
        params = dict(self.sae.named_parameters())
        for name, axis in self.sae.latent_axes().items():
            param = params[name]
            for moment in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(moment) and moment.shape == param.shape:
                    moment.index_fill_(axis, latents.to(moment.device), 0.0)

    def autocast(self, device_type: str) -> torch.autocast:
        """Mixed precision for the SAE forward (``training.autocast``: bfloat16/float16 matmuls,
        float32 master weights and optimizer state); disabled when unset."""
        name = getattr(self.training_cfg, "autocast", None)
        dtype = AUTOCAST_DTYPES[AutocastDType(name)] if name else None
        return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (weights unfolded)."""
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "tokens": self.tokens,
            "scales": self.scales,
            "tokens_since_fired_F": self.tokens_since_fired_F,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count, self.tokens = state["step_count"], state["tokens"]
        self.scales = dict(state["scales"])
        self.tokens_since_fired_F = state["tokens_since_fired_F"].to(self.tokens_since_fired_F.device)

    def folded_copy(self, full: SAE | None = None) -> SAE:
        """The SAE (or ``full``: the whole of a sharded one, gathered) in inference form
        (BatchTopK -> JumpReLU, ...) as a copy with the normalization folded in (takes raw
        activations)."""
        import copy

        source = self.sae if full is None else full
        sae = source.inference_form()
        if sae is source:
            sae = copy.deepcopy(sae)
        sae.fold_activation_scales([self.scales[h] for h in self.hooks_in], [self.scales[h] for h in self.hooks_out])
        return sae
