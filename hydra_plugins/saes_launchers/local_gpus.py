"""``launcher=local_gpus``: run a Hydra multirun's jobs on this machine, one job per visible GPU at
a time, each job a separate process that sees only its GPU (``CUDA_VISIBLE_DEVICES``).

Hydra's basic launcher runs jobs one after another in-process, and submitit's local executor
starts every job at once on the same GPUs; neither fits a workstation with several GPUs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class NoGPUError(RuntimeError):
    """``launcher=local_gpus`` on a machine without CUDA GPUs."""


@dataclass
class LocalGPULauncherConf:
    _target_: str = "hydra_plugins.saes_launchers.local_gpus.LocalGPULauncher"
    gpus: Optional[list[int]] = None  # noqa: UP045 (OmegaConf 2.3 structured configs: no X | None)
    """GPU indices to use; None: every GPU torch sees."""
    module: str = "saes.train"
    """Entry point each job runs as ``python -m <module> <overrides>``."""


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process can use."""
    import torch

    return list(range(torch.cuda.device_count()))


class LocalGPULauncher(Launcher):
    """One job per GPU at a time. Hydra instantiates it by the ``_target_`` above, which must name
    the module that defines the class (Hydra keys plugins by ``__module__.__name__``)."""

    def __init__(self, gpus: list[int] | None = None, module: str = "saes.train") -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.module = module

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        if not gpus:
            raise NoGPUError("launcher=local_gpus found no CUDA GPU on this machine; use launcher=local "
                             "(jobs one after another in this process) or launcher=slurm")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        queue = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict[int, tuple[subprocess.Popen, int, list[str]]] = {}  # gpu -> (process, job index, overrides)
        results: dict[int, JobReturn] = {}
        while queue or running:
            for gpu in [g for g in gpus if g not in running]:
                if not queue:
                    break
                idx, overrides = queue.pop(0)
                run_dir = sweep_dir / self._subdir(list(overrides), idx)
                cmd = [sys.executable, "-m", self.module, *overrides, f"hydra.run.dir={run_dir}"]
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
                log.info(f"job {idx} on GPU {gpu}: {' '.join(overrides)}")
                running[gpu] = (subprocess.Popen(cmd, env=env), idx, list(overrides))
            for gpu, (proc, idx, overrides) in list(running.items()):
                if proc.poll() is not None:
                    results[idx] = self._job_return(overrides, proc.returncode)
                    del running[gpu]
            time.sleep(0.5)
        return [results[i] for i in sorted(results)]

    def _subdir(self, overrides: list[str], idx: int) -> str:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = idx
        return str(sweep_config.hydra.sweep.subdir)

    @staticmethod
    def _job_return(overrides: list[str], returncode: int) -> JobReturn:
        ret = JobReturn(overrides=overrides, return_value=returncode)
        ret.status = JobStatus.COMPLETED if returncode == 0 else JobStatus.FAILED
        if returncode != 0:
            ret._return_value = RuntimeError(f"job {overrides} exited with {returncode}")
        return ret
