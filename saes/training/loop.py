"""The training loop: step every SAE on every batch of an ``ActivationStream`` until the token
budget, on a cadence (log every ``logger.log_every`` steps, evaluate every ``training.eval_every``
tokens, checkpoint every ``training.checkpoint_every``, save every ``training.save_every``), and
stop cleanly on Ctrl-C or a stop signal with a resumable checkpoint (after the step in progress).

Stop signals: SIGTERM, SIGUSR1 (sbatch ``--signal``) and SIGUSR2 (submitit's pre-timeout). After
the checkpoint, the previous handler of the signal runs (e.g. submitit's: requeue the job).
"""

from __future__ import annotations

import signal
from typing import Any

from tqdm import tqdm

from saes.evaluate.held_out import eval_record, evaluate_saes
from saes.evaluate.lm import Splice
from saes.training.checkpoint import save_state
from saes.training.metadata import SAE_DIR, save_member_sae
from saes.training.wiring import Member, TrainingRun

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def train_loop(run: TrainingRun) -> str:
    """Train until the budget or a stop; returns the status: ``finished``, ``interrupted``
    (Ctrl-C) or ``preempted`` (a stop signal). A stopped run has saved a checkpoint."""
    cfg, members = run.cfg, run.members
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
                  desc="train", smoothing=0, mininterval=0.5) as bar:
            while lead.tokens < cfg.tokens and "signal" not in stop:
                batch = run.stream.next_batch()
                if batch is None:
                    break
                outs = [m.trainer.step(batch) for m in members]
                bar.update(next(iter(batch.values())).shape[0])
                if lead.step_count % cfg.logger.log_every == 0:
                    for m, out in zip(members, outs):
                        _log_step(m, out)
                    if len(members) == 1:
                        bar.set_postfix(loss=f"{outs[0].loss.item():.3f}", ev=f"{1 - outs[0].losses['fvu']:.3f}",
                                        l0=f"{outs[0].l0:.1f}", dead=f"{100 * lead.dead_mask().float().mean().item():.1f}%")
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
                    for m in members:  # intermediate SAEs, normalization folded in
                        save_member_sae(cfg, m.spec, m.trainer, m.dir / "checkpoints" / str(m.trainer.tokens), "intermediate")
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "signal" in stop:
        status = "interrupted" if stop["signal"] == signal.SIGINT else "preempted"
    if status != "finished":
        print(f"\n{status}: saving a resumable checkpoint at {lead.tokens:,} tokens in {run.run_dir}")
        save_checkpoint(run, status)
        handler = previous.get(stop.get("signal"))
        if status == "preempted" and callable(handler):
            handler(stop["signal"], None)  # e.g. submitit's handler: requeue the job
    return status


def save_checkpoint(run: TrainingRun, status: str) -> None:
    """Resumable state for the run plus a loadable, folded ``sae/`` for every SAE."""
    save_state(run.run_dir, {
        "stream": run.stream.state_dict(),
        "members": {m.spec.name: m.trainer.state_dict() for m in run.members},
        "wandb_ids": {m.spec.name: m.log.wandb_id for m in run.members if m.log is not None},
    })
    for m in run.members:
        save_member_sae(run.cfg, m.spec, m.trainer, m.dir / SAE_DIR, status)


def splices(members: list[Member]) -> list[Splice]:
    """Every SAE as it stands (inference form, normalization folded in), spliced at its hooks."""
    return [Splice(m.trainer.folded_copy().eval(), m.spec.hooks_in, m.spec.hooks_out) for m in members]


def _log_step(m: Member, out: Any) -> None:
    record = {"train/ev": 1 - out.losses["fvu"], "train/l0": out.l0, "train/dead": m.trainer.dead_mask().float().mean().item(),
              "train/loss": out.loss.item(), "train/lr": m.trainer.optimizer.param_groups[0]["lr"],
              "train/tokens": m.trainer.tokens, **{f"train/{k}": v for k, v in out.losses.items()}}
    m.log.log(record, step=m.trainer.step_count)


def _log_eval(run: TrainingRun) -> None:
    for m, metrics in zip(run.members, evaluate_saes(splices(run.members), run.held, run.periodic_lm)):
        m.log.log(eval_record(metrics), step=m.trainer.step_count)


def _next_multiple(tokens: int, every: int) -> int | None:
    return (tokens // every + 1) * every if every else None
