"""The end of a run: final held-out evaluation of every SAE, its folded checkpoint with feature
densities, the last ``eval/*`` + ``final/*`` log record and ``metrics.json`` (on several ranks, by
the rank that saves the SAE: ``saes.distributed.placement``)."""

from __future__ import annotations

import json
import time
from typing import Any

from saes.atomic import atomic_write_text
from saes.evaluate.held_out import eval_record, evaluate_saes, lm_evaluator
from saes.evaluate.metrics import position_summary
from saes.sae.base import SAE
from saes.training.loop import inference_saes, splices
from saes.training.metadata import SAE_DIR, save_member_sae
from saes.training.wiring import Member, TrainingRun


def final_evaluations(run: TrainingRun, status: str) -> list[tuple[SAE, dict[str, Any], dict[str, Any]] | None]:
    """Per SAE of this rank: the SAE to save (folded), its final held-out metrics (LM metrics only
    for a finished run) and the last ``eval/*`` record, whose LM metrics come from the periodic
    contexts like the earlier ones; None for SAEs another rank saves."""
    cfg, source = run.cfg, run.source
    saes = inference_saes(run)
    if all(sae is None for sae in saes):
        return [None] * len(saes)
    ce_tokens = cfg.training.ce_tokens if status == "finished" else 0
    lm = lm_evaluator(run.model, run.heldout_NT, source.keep_mask, ce_tokens, cfg.data.context_size, periodic=False)
    excluded = source.excluded_ids.tolist() if source.excluded_ids is not None else []
    positions = position_summary(run.heldout_NT, source.keep_mask, run.model.tokenizer.convert_ids_to_tokens(excluded))
    spliced = splices(run.members, saes)
    finals = evaluate_saes(spliced, run.held, lm)
    last_lm = run.periodic_lm(spliced) if run.periodic_lm is not None and status == "finished" else [{} for _ in spliced]
    done = iter(zip(finals, last_lm))
    out: list[tuple[SAE, dict[str, Any], dict[str, Any]] | None] = []
    for sae in saes:
        if sae is None:
            out.append(None)
            continue
        final, extra = next(done)
        out.append((sae, {**final, "positions": positions}, eval_record({**final, **extra})))
    return out


def finish_member(run: TrainingRun, m: Member, status: str, sae: SAE, evaluation: dict[str, Any], record: dict[str, Any],
                  train_seconds: float, wall_start: float) -> dict[str, Any]:
    """The folded checkpoint, the last evaluation record and metrics.json of one SAE."""
    evaluation = dict(evaluation)
    save_member_sae(run.cfg, m.spec, m.trainer, m.dir / SAE_DIR, status, evaluation.pop("log10_density"), sae=sae)
    metrics: dict[str, Any] = {
        "status": status,
        "train_tokens": m.trainer.tokens,
        "train_seconds": train_seconds,
        "train_tokens_per_second": m.trainer.tokens / max(train_seconds, 1e-9),
        "model_forwards": run.source.forwards,
        **evaluation,
    }
    metrics["wall_seconds"] = time.perf_counter() - wall_start
    final = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    m.log.log({**record, **final}, step=m.trainer.step_count)  # one record per step
    m.log.close(metrics)
    atomic_write_text(m.dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
