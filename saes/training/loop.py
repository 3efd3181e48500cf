"""The training loop: step every SAE on every batch of an ``ActivationStream`` until the token
budget, on a cadence (log every ``logger.log_every`` steps, evaluate every ``training.eval_every``
tokens, checkpoint every ``training.checkpoint_every``, save every ``training.save_every``), and
stop cleanly on Ctrl-C or a stop signal with a resumable checkpoint (after the step in progress).

Stop signals: SIGTERM, SIGUSR1 (sbatch ``--signal``) and SIGUSR2 (submitit's pre-timeout). After
the checkpoint, the previous handler of the signal runs (e.g. submitit's: requeue the job).

On several ranks (``saes.distributed.placement``) every rank runs this loop in step: after each
batch the ranks agree whether to go on (a stop signal or an exhausted stream on any rank stops all
of them at the same step), and checkpoints gather every rank's state into one file.
"""

from __future__ import annotations

import signal
from typing import Any

from tqdm import tqdm

from saes.distributed.placement import CONTINUE, EXHAUSTED, INTERRUPTED, PREEMPTED, Placement
from saes.evaluate.held_out import eval_record, evaluate_saes
from saes.evaluate.lm import Splice
from saes.sae.base import SAE
from saes.training.checkpoint import save_state
from saes.training.metadata import SAE_DIR, save_member_sae
from saes.training.wiring import Member, TrainingRun

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def train_loop(run: TrainingRun) -> str:
    """Train until the budget or a stop; returns the status: ``finished``, ``interrupted``
    (Ctrl-C) or ``preempted`` (a stop signal). A stopped run has saved a checkpoint."""
    cfg, members, placement = run.cfg, run.members, run.placement
    stop: dict[str, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    # Ctrl-C too sets a flag: the step (and any checkpoint write) in progress always finishes, so
    # no batch is handed out without being trained on and no file is left half-written.
    previous = {sig: signal.signal(sig, on_signal) for sig in (*STOP_SIGNALS, signal.SIGINT)}
    lead = members[0].trainer
    next_eval = _next_multiple(lead.tokens, cfg.training.eval_every)
    next_ckpt = _next_multiple(lead.tokens, cfg.training.checkpoint_every)
    next_save = _next_multiple(lead.tokens, cfg.training.save_every)
    status = "finished"
    try:
        with tqdm(total=cfg.tokens, initial=lead.tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                  desc="train", smoothing=0, mininterval=0.5, disable=not placement.is_lead) as bar:
            while lead.tokens < cfg.tokens:
                # a stop is agreed before the next batch is taken, so no batch is lost on resume
                if (agreed := placement.agree(_stop_wanted(stop))) != CONTINUE:
                    stop.setdefault("signal", signal.SIGINT if agreed == INTERRUPTED else signal.SIGTERM)  # maybe another rank's
                    break
                batch = run.stream.next_batch()
                if placement.agree(_batch_wanted(batch, placement, cfg.training.batch_size)) != CONTINUE:
                    break
                batch = placement.global_batch(batch)
                tokens_before = lead.tokens
                outs = [m.trainer.step(batch) for m in members]
                bar.update(lead.tokens - tokens_before)
                if lead.step_count % cfg.logger.log_every == 0:
                    records = [_log_step(run, m, out) for m, out in zip(members, outs)]
                    if len(members) == 1:
                        bar.set_postfix(loss=f"{records[0]['train/loss']:.3f}", ev=f"{records[0]['train/ev']:.3f}",
                                        l0=f"{records[0]['train/l0']:.1f}", dead=f"{100 * records[0]['train/dead']:.1f}%")
                if next_eval is not None and lead.tokens >= next_eval:
                    next_eval += cfg.training.eval_every
                    if lead.tokens < cfg.tokens:  # the final evaluation covers the last step
                        with run.eval_lock:  # no prefetched forward while the LM evaluation runs the model
                            _log_eval(run)
                if next_ckpt is not None and lead.tokens >= next_ckpt:
                    next_ckpt += cfg.training.checkpoint_every
                    save_checkpoint(run, "checkpoint")
                if next_save is not None and lead.tokens >= next_save:
                    next_save += cfg.training.save_every
                    for m, sae in zip(members, inference_saes(run)):  # intermediate SAEs, normalization folded in
                        if sae is not None:
                            save_member_sae(cfg, m.spec, m.trainer, m.dir / "checkpoints" / str(m.trainer.tokens), "intermediate",
                                            sae=sae)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "signal" in stop:
        status = "interrupted" if stop["signal"] == signal.SIGINT else "preempted"
    if status != "finished":
        if placement.is_lead:
            print(f"\n{status}: saving a resumable checkpoint at {lead.tokens:,} tokens in {run.run_dir}")
        save_checkpoint(run, status)
        handler = previous.get(stop.get("signal"))
        if status == "preempted" and callable(handler):
            handler(stop["signal"], None)  # e.g. submitit's handler: requeue the job
    return status


def _stop_wanted(stop: dict[str, Any]) -> int:
    """``INTERRUPTED`` (Ctrl-C), ``PREEMPTED`` (a stop signal) or ``CONTINUE``."""
    if "signal" not in stop:
        return CONTINUE
    return INTERRUPTED if stop["signal"] == signal.SIGINT else PREEMPTED


def _batch_wanted(batch: dict[str, Any] | None, placement: Placement, batch_size: int) -> int:
    """``EXHAUSTED`` when the stream ended; on several ranks also at a short last batch (the ranks'
    shares must be equal to be gathered and averaged)."""
    if batch is None:
        return EXHAUSTED
    short = placement.world > 1 and next(iter(batch.values())).shape[0] < placement.local_batch_size(batch_size)
    return EXHAUSTED if short else CONTINUE


def save_checkpoint(run: TrainingRun, status: str) -> None:
    """Resumable state for the run plus a loadable, folded ``sae/`` for every SAE. On several ranks
    rank 0 writes one file holding every rank's stream and the trainers each rank saves (one copy
    of replicated ones), so no checkpoint mixes steps."""
    placement = run.placement
    keeps = placement.logs() or placement.sharded
    mine = {"stream": run.stream.state_dict(), "members": {m.spec.name: m.trainer.state_dict() for m in run.members if keeps}}
    ranks = placement.gather_to_lead(mine)
    if ranks is not None:
        save_state(run.run_dir, {**ranks[0], "world": placement.world, "ranks": ranks[1:],
                                 "wandb_ids": {m.spec.name: m.log.wandb_id for m in run.members if m.log is not None}})
    for m, sae in zip(run.members, inference_saes(run)):
        if sae is not None:
            save_member_sae(run.cfg, m.spec, m.trainer, m.dir / SAE_DIR, status, sae=sae)
    placement.barrier()  # no rank goes on (or exits) before the checkpoint is on disk


def inference_saes(run: TrainingRun) -> list[SAE | None]:
    """Every SAE as it stands (inference form, normalization folded in) on the rank that logs and
    saves it, None elsewhere; a latent-sharded SAE is gathered (every rank takes part)."""
    out: list[SAE | None] = []
    for m in run.members:
        if run.placement.sharded:
            full = m.trainer.sae.gather_full()
            out.append(m.trainer.folded_copy(full).eval() if full is not None else None)
        else:
            out.append(m.trainer.folded_copy().eval() if run.placement.logs() else None)
    return out


def splices(members: list[Member], saes: list[SAE | None]) -> list[Splice]:
    """The given SAEs spliced at their members' hooks (members without one are left out)."""
    return [Splice(sae, m.spec.hooks_in, m.spec.hooks_out) for m, sae in zip(members, saes) if sae is not None]


def _log_step(run: TrainingRun, m: Member, out: Any) -> dict[str, Any]:
    """The step's ``train/*`` record (loss terms averaged over the ranks of a data-parallel run),
    logged by the rank that logs this SAE."""
    values = run.placement.mean_over_ranks([out.loss.item(), out.l0, *out.losses.values()])
    loss, l0, losses = values[0], values[1], dict(zip(out.losses, values[2:]))
    record = {"train/ev": 1 - losses["fvu"], "train/l0": l0, "train/dead": m.trainer.dead_mask().float().mean().item(),
              "train/loss": loss, "train/lr": m.trainer.optimizer.param_groups[0]["lr"],
              "train/tokens": m.trainer.tokens, **{f"train/{k}": v for k, v in losses.items()}}
    if m.log is not None:
        m.log.log(record, step=m.trainer.step_count)
    return record


def _log_eval(run: TrainingRun) -> None:
    saes = inference_saes(run)
    logged = [m for m, sae in zip(run.members, saes) if sae is not None]
    for m, metrics in zip(logged, evaluate_saes(splices(run.members, saes), run.held, run.periodic_lm)):
        m.log.log(eval_record(metrics), step=m.trainer.step_count)


def _next_multiple(tokens: int, every: int) -> int | None:
    return (tokens // every + 1) * every if every else None
