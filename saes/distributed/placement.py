"""How a run's work is split over the ranks of a job (``distributed.strategy``).

- ``none`` (one process) and ``data``: every rank trains every SAE of the run; under ``data`` each
  rank draws ``training.batch_size / ranks`` rows per step from its own share of the corpus and
  the gradients are averaged (``DataParallelSync``). Rank 0 logs, evaluates and saves.
- ``saes``: every rank draws its share of rows; the rows are all-gathered into the global batch;
  each rank trains the SAEs ``assign_members`` gives it (balanced by cost) and saves them.
- ``latents``: rows all-gathered as for ``saes``; the run's one SAE is sharded over its latents
  (``saes.distributed.latents``); rank 0 gathers it to evaluate and save it.

Every collective here is called by every rank in the same order.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from saes.activations.stream import Activations
from saes.config import DistributedStrategy
from saes.distributed.context import SINGLE, RankInfo
from saes.distributed.sync import DataParallelSync, LatentShardSync, StepSync
from saes.errors import ConfigError

CONTINUE, EXHAUSTED, INTERRUPTED, PREEMPTED = 0, 1, 2, 3
"""What a rank wants after a batch; the job does the largest any rank wants."""
SHARDED_ARCHITECTURES = ("topk", "batchtopk")


def _comm_device() -> str:
    """Where small tensors for collectives live: nccl only moves CUDA tensors."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def assign_members(costs: Sequence[float], ranks: int) -> list[int]:
    """The rank of each member: longest processing time first onto the least loaded rank (ties
    to the lowest rank), so the loads differ by at most one member's cost; no divisibility needed."""
    loads = [(0.0, r) for r in range(ranks)]
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        owner[i] = rank
        heapq.heappush(loads, (load + costs[i], rank))
    return owner


def member_cost(options: dict[str, Any], d_in: int) -> float:
    """FLOPs of one step are ~ d_in x d_sae (encoder and decoder)."""
    d_sae = options.get("d_sae") or options.get("expansion_factor", 8) * d_in
    return float(d_in * d_sae)


@dataclass(frozen=True)
class Placement:
    """This rank's part of the run."""

    strategy: DistributedStrategy = DistributedStrategy.none
    ranks: RankInfo = SINGLE

    @property
    def world(self) -> int:
        return self.ranks.world

    @property
    def is_lead(self) -> bool:
        return self.ranks.is_lead

    @property
    def gathers_rows(self) -> bool:
        """Every trainer sees the global batch (all-gathered from the ranks' shares)."""
        return self.world > 1 and self.strategy in (DistributedStrategy.saes, DistributedStrategy.latents)

    @property
    def sharded(self) -> bool:
        return self.world > 1 and self.strategy == DistributedStrategy.latents

    def check(self, cfg: Any, specs: list[Any]) -> None:
        """Settings this strategy cannot run, by key (before anything loads)."""
        if self.world == 1:
            return
        if cfg.training.batch_size % self.world:
            raise ConfigError(f"training.batch_size={cfg.training.batch_size} must be a multiple of the {self.world} ranks "
                              f"(each draws batch_size / ranks rows per step)")
        if self.strategy == DistributedStrategy.saes and len(specs) < self.world:
            raise ConfigError(f"distributed=saes splits the run's {len(specs)} SAE(s) over {self.world} ranks: train at least "
                              f"{self.world} (e.g. layer=0-{self.world - 1}) or use distributed=data")
        if self.strategy == DistributedStrategy.latents:
            if len(specs) != 1:
                raise ConfigError(f"distributed=latents shards one SAE; this run has {len(specs)} (one layer, one hook, "
                                  "no option lists), or use distributed=saes")
            options = specs[0].sae_options
            if options["architecture"] not in SHARDED_ARCHITECTURES or options.get("decoder_norm_selection"):
                raise ConfigError("distributed=latents supports sae=topk and sae=batchtopk without decoder_norm_selection "
                                  f"(got sae={options['architecture']}); use distributed=data for the others")

    def local_batch_size(self, batch_size: int) -> int:
        """Rows this rank draws from its stream per step."""
        return batch_size // self.world

    def owned(self, specs: list[Any], d_in: int) -> list[Any]:
        """The SAEs this rank trains."""
        if self.strategy != DistributedStrategy.saes or self.world == 1:
            return list(specs)
        owner = assign_members([member_cost(s.sae_options, d_in) for s in specs], self.world)
        return [s for s, r in zip(specs, owner) if r == self.ranks.rank]

    def step_sync(self) -> StepSync:
        if self.world == 1:
            return StepSync()
        if self.strategy == DistributedStrategy.data:
            return DataParallelSync()
        return LatentShardSync() if self.sharded else StepSync()

    def logs(self) -> bool:
        """This rank logs and saves its trainers (``saes``: each rank its own; else rank 0)."""
        return self.strategy == DistributedStrategy.saes or self.is_lead

    def global_batch(self, batch: Activations) -> Activations:
        """This rank's rows, or every rank's in rank order when trainers see the global batch."""
        if not self.gathers_rows:
            return batch
        out = {}
        for hook, rows in batch.items():
            parts = [torch.empty_like(rows) for _ in range(self.world)]
            dist.all_gather(parts, rows.contiguous())
            out[hook] = torch.cat(parts)
        return out

    def agree(self, wanted: int) -> int:
        """The largest of every rank's ``CONTINUE``/``EXHAUSTED``/``INTERRUPTED``/``PREEMPTED``."""
        if self.world == 1:
            return wanted
        flag = torch.tensor([wanted], dtype=torch.int32, device=_comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def gather_to_lead(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.is_lead else None
        dist.gather_object(obj, out, dst=0)
        return out

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """Per-rank logged values averaged (``data``: each rank's loss terms are its share's)."""
        if self.world == 1 or self.strategy != DistributedStrategy.data:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return (t / self.world).tolist()

    @torch.no_grad()
    def share_initialisation(self, trainer: Any) -> None:
        """Rank 0's data-driven initialisation (normalization scales, b_dec; every weight under
        ``data``) for every rank, so replicas start equal and shards share their scales."""
        if self.world == 1 or self.strategy == DistributedStrategy.saes:
            return
        tensors = list(trainer.sae.state_dict().values()) if self.strategy == DistributedStrategy.data else [trainer.sae.b_dec_O]
        for t in tensors:
            dist.broadcast(t, 0)
        scales = torch.tensor([trainer.scales[h] for h in trainer.scales], dtype=torch.float64, device=_comm_device())
        dist.broadcast(scales, 0)
        trainer.scales = dict(zip(trainer.scales, scales.tolist()))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
