"""Which rank this process is, from the launcher's environment, and the process group.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
under SLURM (``srun``, or a submitit job with several tasks) they are derived from ``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_LOCALID`` and the job's first host by submitit's
``TorchDistributedEnvironment``. The device is ``cuda:<local rank>`` (not the global rank, which
breaks on a second node), and the backend nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saes.config import DistributedStrategy
from saes.errors import ConfigError


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_lead(self) -> bool:
        """Rank 0: logs, evaluates and writes the run's shared files."""
        return self.rank == 0


SINGLE = RankInfo(0, 1, 0)


def launched_ranks() -> RankInfo:
    """This process's rank from torchrun's or SLURM's variables (``SINGLE`` when neither
    launched several); exports torch's ``env://`` variables under SLURM."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return RankInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if _slurm_tasks() > 1:
        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")  # plain srun: submitit's JobEnvironment needs it
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment()  # a preset MASTER_PORT is used, else one derived from the job id
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.update(MASTER_PORT=str(env.master_port), RANK=str(env.rank), WORLD_SIZE=str(env.world_size),
                          LOCAL_RANK=str(env.local_rank), LOCAL_WORLD_SIZE=str(env.local_world_size))
        return RankInfo(env.rank, env.world_size, env.local_rank)
    return SINGLE


def _slurm_tasks() -> int:
    """Tasks of the SLURM job step this process belongs to (1 outside SLURM). The batch script of
    an ``--ntasks=N`` job is no rank (it has no ``SLURM_STEP_ID``): only what ``srun`` starts is."""
    if "SLURM_PROCID" not in os.environ or "SLURM_STEP_ID" not in os.environ or os.environ["SLURM_STEP_ID"] == "batch":
        return 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def rank_device(device: str, ranks: RankInfo) -> str:
    """The device of this rank: ``cuda`` (or ``auto`` on a CUDA machine) becomes ``cuda:<local rank>``."""
    if ranks.world > 1 and device in ("cuda", "auto") and torch.cuda.is_available():
        if ranks.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {ranks.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                              "launch at most that many ranks per node (--nproc-per-node / tasks_per_node)")
        return f"cuda:{ranks.local_rank}"
    return device


def check_launch(strategy: DistributedStrategy, ranks: RankInfo) -> None:
    """A job on several ranks needs a strategy (and one rank needs none)."""
    if ranks.world > 1 and strategy == DistributedStrategy.none:
        raise ConfigError(f"launched on {ranks.world} ranks but distributed=none: choose distributed=data|saes|latents "
                          "(see docs/distributed.md), or launch one process")


def init_process_group(cfg: Any, ranks: RankInfo, device: str) -> None:
    """Join the job's process group (``distributed.backend``, ``distributed.timeout_s``)."""
    if ranks.world == 1 or dist.is_initialized():
        return
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"distributed.backend={cfg.backend} must be auto, nccl or gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=timedelta(seconds=cfg.timeout_s))


COLLECTIVE_FAILURES = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "broken pipe")


def lost_ranks_message(err: RuntimeError, run_dir: object) -> str | None:
    """What to tell the user when a collective failed (another rank died, hangs or lost its
    network), naming this rank; None for an error that is not a collective's."""
    ranks = RankInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    if ranks.world == 1 or not any(word in str(err).lower() for word in COLLECTIVE_FAILURES):
        return None
    first = str(err).strip().splitlines()[0][:300]
    return (f"rank {ranks.rank} of {ranks.world}: a collective failed ({first}): another rank died, hangs or cannot be "
            f"reached; the job stops. The last checkpoint in {run_dir} stays loadable: re-run the same command to resume.")


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
