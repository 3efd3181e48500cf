"""``distributed=latents``: one wide TopK / BatchTopK SAE sharded over its latents.

Rank ``r`` of the group holds latents ``shard_bounds(d_sae, world, r)``: its columns of
``W_enc_DF`` and ``b_enc_F`` and its rows of ``W_dec_FO`` (a local ``TopKSAE``/``BatchTopKSAE``
with ``d_sae = F_local``); ``b_dec_O`` is replicated. Every rank is given the same full batch.
A step: local pre-activations, the global selection (``saes.distributed.sharded_select``: local
top, all-gather of the candidates, global top), the local sparse encode/decode of this rank's
winners, and one all-reduce (sum) of the partial reconstructions (``sum_partials``; AuxK's
partial decode rides along). Every rank then computes the same loss. ``b_dec``'s gradient is its
decoder part (replicated) plus its encoder part through ``x - b_dec`` summed over the shards
(``grad_summed``). Results equal a single-process SAE's up to ties and float rounding.

Collectives per step: all-reduce of the dead-latent count (with AuxK), one all-gather per
selection (TopK/BatchTopK and AuxK), one all-reduce of the reconstructions, one all-reduce of
``b_dec``'s gradient in the backward, one of the squared gradient norm when clipping.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from saes.distributed.collectives import Group, all_reduce_sum, grad_summed, sum_partials
from saes.distributed.sharded_select import sharded_auxk_select, sharded_batch_topk_select, sharded_topk_select
from saes.errors import ConfigError
from saes.sae.base import SAE, StepInput, TrainStepOutput, fvu_and_mse
from saes.sae.batchtopk import BatchTopKSAE
from saes.sae.sparse_ops import decode_selected, encode_selected, pre_acts
from saes.sae.topk import AuxCodes, TopKConfig, TopKSAE, annealed_k, check_k_options

UNSUPPORTED = "distributed=latents supports sae=topk and sae=batchtopk without decoder_norm_selection"
SHARDED_AXES = {"W_enc_DF": 1, "b_enc_F": 0, "W_dec_FO": 0}
"""The parameters split over the ranks, and their latent axis (``b_dec_O`` is replicated)."""


def shard_bounds(d_sae: int, world: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)``: the latents of ``rank``, contiguous; sizes differ by at most one (the first
    ``d_sae % world`` ranks hold one more)."""
    base, extra = divmod(d_sae, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def check_shardable(cfg: Any) -> None:
    """Raise ``ConfigError`` unless ``cfg`` (``sae.*``) is a TopK or BatchTopK config without
    ``decoder_norm_selection``."""
    if getattr(cfg, "architecture", None) not in ("topk", "batchtopk") or getattr(cfg, "decoder_norm_selection", True):
        raise ConfigError(f"{UNSUPPORTED} (got sae={getattr(cfg, 'architecture', None)}"
                          f", decoder_norm_selection={getattr(cfg, 'decoder_norm_selection', None)})")


def shard_config(cfg: TopKConfig, n_local: int) -> TopKConfig:
    """The config of a ``n_local``-latent shard of the SAE ``cfg``: ``k``/``k_start`` capped at the
    shard size (only so that it constructs; the wrapper selects with the global ``cfg``)."""
    k_start = None if cfg.k_start is None else min(cfg.k_start, n_local)
    return dataclasses.replace(cfg, d_sae=n_local, k=min(cfg.k, n_local), k_start=k_start)


def _placed_like(sae: TopKSAE, ref: torch.Tensor) -> TopKSAE:
    """``sae`` on ``ref``'s device with parameters of its dtype (buffers keep theirs: the float64
    threshold stays float64, which ``Module.to(tensor)`` would not keep)."""
    sae = sae.to(ref.device)
    for param in sae.parameters():
        param.data = param.data.to(ref.dtype)
    return sae


class LatentShardedSAE(nn.Module):
    """This rank's shard of a TopK/BatchTopK SAE with ``d_sae_global`` latents (``shard``: a
    ``TopKSAE``/``BatchTopKSAE`` of this rank's ``F_local`` latents; ``cfg``: the full SAE's
    config, default ``shard.cfg`` with ``d_sae_global``). All methods that touch the other shards
    are collectives: every rank of ``group`` must call them in the same order."""

    def __init__(self, shard: TopKSAE, d_sae_global: int, group: Group = None, cfg: TopKConfig | None = None):
        super().__init__()
        if type(shard) not in (TopKSAE, BatchTopKSAE):
            raise ConfigError(f"{UNSUPPORTED} (got {type(shard).__name__})")
        self.cfg: TopKConfig = cfg if cfg is not None else dataclasses.replace(shard.cfg, d_sae=d_sae_global)
        check_shardable(self.cfg)
        check_k_options(self.cfg, d_sae_global)
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if d_sae_global < self.world:
            raise ConfigError(f"sae.d_sae={d_sae_global} is smaller than the {self.world} ranks of distributed=latents")
        self.lo, self.hi = shard_bounds(d_sae_global, self.world, self.rank)
        if shard.d_sae != self.hi - self.lo:
            raise ValueError(f"rank {self.rank} holds latents [{self.lo}, {self.hi}) but its shard has {shard.d_sae}")
        self.shard = shard
        self.d_sae_global = d_sae_global
        self.d_sae = shard.d_sae
        """This rank's latent count: per-latent state kept by the trainer (dead counters) is local."""
        self.max_cols = shard_bounds(d_sae_global, self.world, 0)[1]
        """The largest shard's latent count (rank 0's)."""
        self.d_in, self.d_out, self.is_transcoder = shard.d_in, shard.d_out, shard.is_transcoder
        self.unit_norm_decoder = shard.unit_norm_decoder
        self.architecture = shard.architecture

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: TopKConfig, d_in: int, d_out: int | None = None, group: Group = None) -> LatentShardedSAE:
        """This rank's (uninitialised) shard of the SAE ``cfg`` (``d_out``: a transcoder)."""
        check_shardable(cfg)
        d_sae = cfg.resolve_d_sae(d_in)
        lo, hi = shard_bounds(d_sae, dist.get_world_size(group), dist.get_rank(group))
        shard_cls = BatchTopKSAE if cfg.architecture == "batchtopk" else TopKSAE
        shard = shard_cls(shard_config(cfg, hi - lo), d_in, d_out)
        return cls(shard, d_sae, group, dataclasses.replace(cfg, d_sae=d_sae))

    @classmethod
    @torch.no_grad()
    def from_full(cls, full: TopKSAE, group: Group = None) -> LatentShardedSAE:
        """This rank's slice of a full TopK/BatchTopK SAE (same device, dtype and threshold)."""
        check_shardable(full.cfg)
        lo, hi = shard_bounds(full.d_sae, dist.get_world_size(group), dist.get_rank(group))
        d_out = full.d_out if full.is_transcoder else None
        shard = _placed_like(type(full)(shard_config(full.cfg, hi - lo), full.d_in, d_out), full.W_dec_FO)
        shard.apply_b_dec_to_input = full.apply_b_dec_to_input
        for name, axis in SHARDED_AXES.items():
            getattr(shard, name).copy_(getattr(full, name).narrow(axis, lo, hi - lo))
        shard.b_dec_O.copy_(full.b_dec_O)
        for name, buf in full.named_buffers():
            shard.get_buffer(name).copy_(buf)
        return cls(shard, full.d_sae, group, dataclasses.replace(full.cfg, d_sae=full.d_sae))

    @torch.no_grad()
    def gather_full(self, dst: int = 0) -> SAE | None:
        """The full SAE (a ``TopKSAE``/``BatchTopKSAE``, thresholds copied) on rank ``dst`` of the
        group, None on the others. A collective (``dist.gather`` of shards padded to one size)."""
        parts: dict[str, torch.Tensor] = {}
        sizes = [b - a for a, b in (shard_bounds(self.d_sae_global, self.world, r) for r in range(self.world))]
        dst_global = dst if self.group is None else dist.get_global_rank(self.group, dst)
        for name, axis in SHARDED_AXES.items():
            local = getattr(self.shard, name).detach().movedim(axis, 0)
            padded = local.new_zeros(self.max_cols, *local.shape[1:])
            padded[: self.d_sae] = local
            out = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == dst else None
            dist.gather(padded, out, dst=dst_global, group=self.group)
            if out is not None:
                parts[name] = torch.cat([t[:n] for t, n in zip(out, sizes)]).movedim(0, axis)
        if self.rank != dst:
            return None
        d_out = self.d_out if self.is_transcoder else None
        full = _placed_like(type(self.shard)(self.cfg, self.d_in, d_out), self.W_dec_FO)
        full.apply_b_dec_to_input = self.shard.apply_b_dec_to_input
        for name, value in parts.items():
            getattr(full, name).copy_(value)
        full.b_dec_O.copy_(self.b_dec_O)
        for name, buf in self.shard.named_buffers():
            full.get_buffer(name).copy_(buf)
        return full

    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None, decoder_norm: float | None = None) -> None:
        """Initialise this shard as ``SAE.initialize`` does (``b_dec`` zero). Each rank draws from
        its own stream, seeded from ``generator`` (the same on every rank) plus the rank, so the
        shards are independent (not the slices of a single-process initialisation)."""
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
        self.shard.initialize(torch.Generator(device=device).manual_seed(seed + self.rank), decoder_norm)

    # -- what the trainer reads --------------------------------------------------------------
    @property
    def W_enc_DF(self) -> torch.Tensor:
        return self.shard.W_enc_DF

    @property
    def b_enc_F(self) -> torch.Tensor:
        return self.shard.b_enc_F

    @property
    def W_dec_FO(self) -> torch.Tensor:
        return self.shard.W_dec_FO

    @property
    def b_dec_O(self) -> torch.Tensor:
        return self.shard.b_dec_O

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return self.shard.param_groups(lr)

    def latent_axes(self) -> dict[str, int]:
        """``{name in self.named_parameters(): latent axis}`` (the shard's, prefixed ``shard.``)."""
        return {f"shard.{name}": axis for name, axis in self.shard.latent_axes().items()}

    def before_step(self) -> None:
        """Unit-norm gradient projection, per decoder row: exact per shard."""
        self.shard.before_step()

    def after_step(self) -> None:
        """Decoder row renormalisation, per row: exact per shard."""
        self.shard.after_step()

    # -- training ----------------------------------------------------------------------------
    def training_forward(self, step: StepInput) -> TrainStepOutput:
        """The single-process ``training_forward`` on this rank's latents: ``step`` holds the same
        full batch ``[B, D]`` on every rank and ``dead_F`` this rank's ``[F_local]`` mask. The loss,
        ``y_hat_BO``, ``l0`` and ``losses`` are the same on every rank; ``fired_F`` is local."""
        sae, cfg = self.shard, self.cfg
        if step.batch_sum is not None:
            raise ValueError("a latent-sharded SAE takes the whole batch on every rank, not a data-parallel share")
        x_BD, y_BD = step.x_BD, step.y_BO
        B = x_BD.shape[0]
        k = annealed_k(cfg.k, cfg.k_start, cfg.k_anneal_fraction, step.progress)
        dead_F, n_dead = self._global_dead(step)
        b_dec_in = sae.b_dec_in()
        x_c_BD, pre_BF = pre_acts(x_BD, sae.W_enc_DF, sae.b_enc_F, b_dec_in)
        if isinstance(sae, BatchTopKSAE):
            rows_N, cols_N, vals_N, top = sharded_batch_topk_select(pre_BF, k * B, x_BD.dtype, self.max_cols,
                                                                    self.group)
        else:
            rows_N, cols_N, vals_N, top = sharded_topk_select(pre_BF, k, x_BD.dtype, self.max_cols, self.group)
        aux = None
        if dead_F is not None:
            dead_idx_S = dead_F.nonzero().squeeze(1)
            aux = AuxCodes(*sharded_auxk_select(pre_BF, dead_idx_S, min(sae.aux_k, n_dead), x_BD.dtype, self.group),
                           dead_idx_S, B)
        del pre_BF
        b_dec_enc = grad_summed(b_dec_in, self.group) if b_dec_in is not None else None
        encoded = encode_selected(x_c_BD, sae.W_enc_DF, sae.b_enc_F, b_dec_enc, rows_N, cols_N, vals_N,
                                  aux=aux.selection() if aux is not None else None)
        if aux is not None:
            vals_N, aux.vals_N = encoded
            parts = decode_selected(rows_N, cols_N, vals_N, sae.W_dec_FO, B, aux=aux.selection())
            y_part_BO, err_hat_BO = sum_partials(torch.stack(parts), self.group).unbind(0)
        else:
            y_part_BO = sum_partials(decode_selected(rows_N, cols_N, encoded, sae.W_dec_FO, B), self.group)
        y_hat_BO = y_part_BO + sae.b_dec_O
        total_var = step.total_variance(y_BD)
        loss, _ = fvu_and_mse(y_BD, y_hat_BO, total_var)
        losses = {"fvu": loss.item()}
        if isinstance(sae, BatchTopKSAE):
            positive = top[top > 0]
            sae.update_threshold(positive.min().reshape(1) if positive.numel() else positive)
            losses["threshold"] = float(sae.threshold)
        elif cfg.k_start is not None:
            losses["k"] = float(k)
        if aux is not None:
            auxk = sae._auxk_fvu(err_hat_BO, (y_BD - y_hat_BO).detach(), n_dead, total_var)
            loss = loss + cfg.aux_coef * auxk
            losses["auxk"] = auxk.item()
        fired_F = torch.zeros(self.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[cols_N[vals_N > 0]] = True
        return TrainStepOutput(loss=loss, y_hat_BO=y_hat_BO.detach(), fired_F=fired_F,
                               l0=(top > 0).sum().item() / B, losses=losses)

    def _global_dead(self, step: StepInput) -> tuple[torch.Tensor | None, int]:
        """``(local dead mask, global dead count)`` when the step has an AuxK term, else
        ``(None, 0)``; one all-reduce when ``dead_F`` is given (on every rank, or on none)."""
        if step.dead_F is None or self.cfg.aux_coef <= 0:
            return None, 0
        n_dead = int(all_reduce_sum(step.dead_F.sum().reshape(1), self.group).item())
        return (step.dead_F, n_dead) if n_dead > 0 else (None, 0)

    # -- gradient norm -----------------------------------------------------------------------
    @torch.no_grad()
    def global_grad_norm(self) -> torch.Tensor:
        """The L2 norm of the full SAE's gradient: the sharded parameters' squared norms summed
        over the ranks (one all-reduce) plus the replicated ``b_dec``'s, counted once. A scalar,
        the same on every rank."""
        sq = torch.zeros(1, dtype=torch.float32, device=self.W_dec_FO.device)
        for name in SHARDED_AXES:
            grad = getattr(self.shard, name).grad
            if grad is not None:
                sq += grad.float().pow(2).sum()
        sq = all_reduce_sum(sq, self.group)
        if self.b_dec_O.grad is not None:
            sq += self.b_dec_O.grad.float().pow(2).sum()
        return sq.sqrt()[0]

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale every gradient by ``max_norm / (norm + 1e-6)`` when the global norm exceeds
        ``max_norm`` (``saes.training.trainer.clip_grad_norm``'s rule); returns the norm."""
        norm = self.global_grad_norm()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        coef = max_norm / (norm + 1e-6)
        if grads and norm.device.type == "cpu":
            if coef < 1.0:
                torch._foreach_mul_(grads, coef)
        elif grads:  # no host sync: multiply by min(coef, 1) as torch.nn.utils.clip_grad_norm_ does
            torch._foreach_mul_(grads, coef.clamp(max=1.0))
        return norm

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """The full SAE's reconstruction ``[B, O]`` of ``x_BD`` (the same batch on every rank):
        TopK with the global selection, BatchTopK with its threshold (as ``encode``). A collective."""
        sae = self.shard
        _, pre_BF = pre_acts(x_BD, sae.W_enc_DF, sae.b_enc_F, sae.b_dec_in())
        if isinstance(sae, BatchTopKSAE):
            rows_N, cols_N = (pre_BF > sae.threshold.to(pre_BF.dtype)).nonzero(as_tuple=True)
            vals_N = pre_BF[rows_N, cols_N]
        else:
            rows_N, cols_N, vals_N, _ = sharded_topk_select(pre_BF, self.cfg.k, x_BD.dtype, self.max_cols, self.group)
        part_BO = decode_selected(rows_N, cols_N, vals_N, sae.W_dec_FO, x_BD.shape[0])
        return all_reduce_sum(part_BO, self.group) + sae.b_dec_O

    def reconstruct(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[self(x_BD)]`` for the one input hook (a collective)."""
        (x_BD,) = inputs
        return [self(x_BD)]

    def extra_repr(self) -> str:
        return f"latents [{self.lo}, {self.hi}) of {self.d_sae_global} on rank {self.rank}/{self.world}"
