"""A whole training run: wiring -> the loop -> the finish.

One run trains every SAE of its plan (``saes.training.plan``) from one model forward per batch.
Each SAE's folder (the run folder itself when there is one SAE) gets ``sae/`` (SAELens v6,
normalization folded in), ``metrics.jsonl``, ``metrics.json`` and its own W&B run. The run folder
gets ``config.yaml`` and, while training, ``checkpoint/state.pt`` (every
``training.checkpoint_every`` tokens and on Ctrl-C or a stop signal, see ``saes.training.loop``).
Re-running the same command resumes from that checkpoint; a finished run is not trained again.
Launched on several ranks (``torchrun``, ``srun``; ``distributed=``), every rank runs this and
rank 0 returns every SAE's metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.atomic import atomic_write_text
from saes.distributed.context import close_process_group
from saes.training.checkpoint import remove_state
from saes.training.finish import final_evaluations, finish_member
from saes.training.loop import train_loop
from saes.training.reuse import check_same_run
from saes.training.wiring import finished_metrics, placement_for, validate_config, wire_run


def run_training(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict[str, dict[str, Any]]:
    """Train the configured SAEs; returns ``{member name: final metrics}`` (on rank 0 of a
    distributed run; ``{}`` on the others). A stopped run exits with 130 (Ctrl-C) or 143 (stop
    signal) after saving its checkpoint."""
    wall_start = time.perf_counter()
    specs = validate_config(cfg)
    lead = placement_for(cfg).is_lead
    if cfg.resume:
        check_same_run(cfg, run_dir)
    if cfg.resume and (done := finished_metrics(cfg, run_dir)) is not None:
        if lead:
            print(f"{run_dir} already finished (resume=false trains it again)")
        return done if lead else {}
    if lead:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        run = wire_run(cfg, run_dir, specs, group)
        try:
            status = train_loop(run)
        finally:
            run.stream.close()
        train_seconds = time.perf_counter() - run.started_at
        finals = final_evaluations(run, status)
        mine = {m.spec.name: finish_member(run, m, status, *final, train_seconds, wall_start)
                for m, final in zip(run.members, finals) if final is not None}
        every_rank = run.placement.gather_to_lead(mine)
        run.placement.barrier()  # every SAE is saved before the checkpoint goes
    finally:
        close_process_group()
    if status != "finished":
        raise SystemExit(130 if status == "interrupted" else 143)
    if every_rank is None:
        return {}
    remove_state(run_dir)
    merged = {name: metrics for part in every_rank for name, metrics in part.items()}
    return {s.name: merged[s.name] for s in specs}
