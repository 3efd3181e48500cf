"""A whole training run: model -> activations -> SAE steps -> evaluation -> checkpoints.

One run trains every SAE of its plan (``saes.training.plan``) from one model forward per batch.
Each SAE's folder (the run folder itself when there is one SAE) gets ``sae/`` (SAELens v6,
normalization folded in), ``metrics.jsonl``, ``metrics.json`` and its own W&B run. The run folder
gets ``config.yaml`` and, while training, ``checkpoint/state.pt`` (every
``training.checkpoint_every`` tokens and on Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2). Re-running the same
command resumes from that checkpoint; a finished run is not trained again.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from saes.activations import ModelForwards, HookError
from saes.data import load_corpus
from saes.errors import ConfigError
from saes.formatting import flatten
from saes.evaluate.metrics import position_summary
from saes.evaluate.lm import Splice
from saes.layers import parse_layers
from saes.models import load_model, resolve_device
from saes.sae.formats import save_sae
from saes.sae.registry import build
from saes.training.checkpoint import load_state, remove_state, save_state
from saes.evaluate.held_out import eval_record, evaluate_saes, lm_evaluator, periodic_lm_evaluator
from saes.training.metrics_log import MetricsLog
from saes.training.plan import MemberSpec, plan_members
from saes.training.schedules import SCHEDULES
from saes.activations.model_stream import ModelActivationStream
from saes.training.trainer import AUTOCAST_DTYPES, B_DEC_INITS, SAETrainer

SAE_DIR = "sae"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # SLURM pre-timeout: USR1 (sbatch --signal), USR2 (submitit)


@dataclass
class Member:
    """One SAE being trained, with its folder and log."""

    spec: MemberSpec
    dir: Path
    trainer: SAETrainer
    log: MetricsLog | None = None


def validate_config(cfg: DictConfig) -> list[MemberSpec]:
    """Fail before loading anything on settings that cannot work, naming the key; returns the plan."""
    for layer in parse_layers(cfg.layer):
        if not 0 <= layer < cfg.model.n_layers:
            raise HookError(f"layer={cfg.layer} is out of range: {cfg.model.name} has {cfg.model.n_layers} layers (0-{cfg.model.n_layers - 1})")
    members = plan_members(cfg)
    for spec in members:
        with torch.device("meta"):  # checks the variant's options without allocating weights
            build(spec.sae_options, d_in=cfg.model.d_model)
    if cfg.optimizer.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={cfg.optimizer.schedule!r} is unknown; use one of {SCHEDULES}")
    if cfg.training.b_dec_init not in B_DEC_INITS:
        raise ConfigError(f"training.b_dec_init={cfg.training.b_dec_init!r} is unknown; use one of {B_DEC_INITS}")
    if cfg.training.autocast not in (None, *AUTOCAST_DTYPES):
        raise ConfigError(f"training.autocast={cfg.training.autocast!r} is unknown; use one of {sorted(AUTOCAST_DTYPES)} or null")
    if cfg.logger.kind not in ("wandb", "none"):
        raise ConfigError(f"logger.kind={cfg.logger.kind!r} is unknown; use logger=wandb or logger=none")
    for key in ("tokens", "training.batch_size", "activations.batch_contexts"):
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be positive")
    if cfg.activations.prefetch_tokens < 0:
        raise ConfigError(f"activations.prefetch_tokens={cfg.activations.prefetch_tokens} must be >= 0 (0: no prefetching)")
    return members


def checkpoint_metadata(cfg: DictConfig, spec: MemberSpec, trainer: SAETrainer, status: str) -> dict[str, Any]:
    """SAELens ``metadata`` plus what saes needs to evaluate/analyze the SAE later."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["layer"], config["site"] = spec.layer, {"hook_in": spec.hook_in, "hook_out": spec.hook_out}
    config["sae"] = spec.sae_options
    return {
        "model_name": cfg.model.source,
        "hook_name": spec.hook_in,
        "hook_name_out": spec.hook_out,
        "hook_head_index": None,
        "context_size": cfg.data.context_size,
        "prepend_bos": True,
        "dataset_path": cfg.data.path or cfg.data.source,
        "exclude_special_tokens": cfg.data.exclude_special,
        "training_tokens": trainer.tokens,
        "activation_scale_folded": trainer.scale_in,
        "status": status,
        "config": config,
    }


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """Final metrics of every SAE if this run folder already finished, else None."""
    found = {}
    for spec in plan_members(cfg):
        path = run_dir / spec.name / "metrics.json"
        if not path.exists() or json.loads(path.read_text()).get("status") != "finished":
            return None
        found[spec.name] = json.loads(path.read_text())
    return found


def run_training(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict[str, dict[str, Any]]:
    """Train the configured SAEs; returns ``{member name: final metrics}``."""
    wall_start = time.perf_counter()
    specs = validate_config(cfg)
    if cfg.resume and (done := finished_metrics(cfg, run_dir)) is not None:
        print(f"{run_dir} already finished (resume=false trains it again)")
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)

    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    excluded = corpus.special_ids() if cfg.data.exclude_special else None
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.hook_out)))
    source = ModelForwards(model, hooks, excluded, device=device)

    heldout = corpus.heldout_contexts(cfg.training.eval_tokens)
    held = _concat(source.stream(iter(heldout), cfg.activations.batch_contexts))
    stream = ModelActivationStream(corpus, source, cfg.activations.batch_contexts, min(cfg.activations.buffer_tokens, cfg.tokens),
                            cfg.training.batch_size, cfg.tokens, cfg.seed, _prefetch_forwards(cfg))
    members = [Member(s, run_dir / s.name, SAETrainer(build(s.sae_options, held[s.hook_in].shape[1], _d_out(s, held)).to(device),
                                                        cfg.optimizer, cfg.training, cfg.tokens)) for s in specs]
    state = load_state(run_dir) if cfg.resume else None
    start = time.perf_counter()  # throughput counts every training forward, buffer fill included
    if state is not None:
        stream.load_state_dict(state["stream"])
        for m in members:
            m.trainer.load_state_dict(state["members"][m.spec.name])
        print(f"resuming {run_dir} at {members[0].trainer.tokens:,} tokens")
    else:
        sample = stream.sample(cfg.training.norm_estimate_tokens, cfg.seed)
        for m in members:
            x, y = sample[m.spec.hook_in], sample[m.spec.hook_out]
            m.trainer.initialize_from_data(x, x if m.spec.hook_out == m.spec.hook_in else y, torch.Generator().manual_seed(cfg.seed))
    for m in members:
        m.log = MetricsLog(m.dir, cfg.logger, _wandb_name(cfg, m.spec), flatten(checkpoint_metadata(cfg, m.spec, m.trainer, "training")["config"]),
                           group=group or f"{cfg.model.name}_{cfg.sae.architecture}/{run_dir.name}", tags=_tags(cfg, m.spec),
                           wandb_id=(state or {}).get("wandb_ids", {}).get(m.spec.name),
                           resume_step=m.trainer.step_count if state is not None else None)

    periodic_lm = periodic_lm_evaluator(cfg, model, heldout, source.keep_mask)
    try:
        status = _train_loop(cfg, stream, members, held, run_dir, periodic_lm, source.lock)
    finally:
        stream.close()
    train_seconds = time.perf_counter() - start
    final = _final_evals(cfg, members, status, held, heldout, model, source, periodic_lm)
    results = {m.spec.name: _finish_member(cfg, m, status, *ev, source, train_seconds, wall_start) for m, ev in zip(members, final)}
    if status == "finished":
        remove_state(run_dir)
    else:
        raise SystemExit(130 if status == "interrupted" else 143)
    return results


def _train_loop(cfg: DictConfig, stream: ModelActivationStream, members: list[Member], held: dict, run_dir: Path, periodic_lm,
                model_lock: threading.Lock) -> str:
    """Step every SAE on every batch until the token budget; returns the run status. ``model_lock``
    keeps the periodic LM evaluation from running the model during a prefetched forward."""
    stop: dict[str, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    lead = members[0].trainer
    next_eval = _next_multiple(lead.tokens, cfg.training.eval_every)
    next_ckpt = _next_multiple(lead.tokens, cfg.training.checkpoint_every)
    next_save = _next_multiple(lead.tokens, cfg.training.save_every)
    status = "finished"
    try:
        with tqdm(total=cfg.tokens, initial=lead.tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                  desc="train", smoothing=0, mininterval=0.5) as bar:
            while lead.tokens < cfg.tokens and "signal" not in stop:
                batch = stream.next_batch()
                if batch is None:
                    break
                outs = [m.trainer.step(batch[m.spec.hook_in], batch[m.spec.hook_out]) for m in members]
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
                        with model_lock:
                            _log_eval(members, held, periodic_lm)
                if next_ckpt is not None and lead.tokens >= next_ckpt:
                    next_ckpt += cfg.training.checkpoint_every
                    _checkpoint(cfg, stream, members, run_dir, "checkpoint")
                if next_save is not None and lead.tokens >= next_save:
                    next_save += cfg.training.save_every
                    for m in members:  # intermediate SAEs, normalization folded in
                        save_sae(m.trainer.folded_copy().eval(), m.dir / "checkpoints" / str(m.trainer.tokens),
                                 checkpoint_metadata(cfg, m.spec, m.trainer, "intermediate"))
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "signal" in stop:
        status = "preempted"
    if status != "finished":
        print(f"\n{status}: saving a resumable checkpoint at {lead.tokens:,} tokens in {run_dir}")
        _checkpoint(cfg, stream, members, run_dir, status)
        if "signal" in stop and callable(previous.get(stop["signal"])):
            previous[stop["signal"]](stop["signal"], None)  # e.g. submitit's handler: requeue the job
    return status


def _checkpoint(cfg: DictConfig, stream: ModelActivationStream, members: list[Member], run_dir: Path, status: str) -> None:
    """Resumable state for the run plus a loadable, folded ``sae/`` for every SAE."""
    save_state(run_dir, {
        "stream": stream.state_dict(),
        "members": {m.spec.name: m.trainer.state_dict() for m in members},
        "wandb_ids": {m.spec.name: m.log.wandb_id for m in members if m.log is not None},
    })
    for m in members:
        save_sae(m.trainer.folded_copy().eval(), m.dir / SAE_DIR, checkpoint_metadata(cfg, m.spec, m.trainer, status))


def _log_step(m: Member, out: Any) -> None:
    record = {"train/ev": 1 - out.losses["fvu"], "train/l0": out.l0, "train/dead": m.trainer.dead_mask().float().mean().item(),
              "train/loss": out.loss.item(), "train/lr": m.trainer.optimizer.param_groups[0]["lr"],
              "train/tokens": m.trainer.tokens, **{f"train/{k}": v for k, v in out.losses.items()}}
    m.log.log(record, step=m.trainer.step_count)


def _splices(members: list[Member]) -> list[Splice]:
    return [Splice(m.trainer.folded_copy().eval(), m.spec.hook_in, m.spec.hook_out) for m in members]


def _log_eval(members: list[Member], held: dict, lm) -> None:
    for m, metrics in zip(members, evaluate_saes(_splices(members), held, lm)):
        m.log.log(eval_record(metrics), step=m.trainer.step_count)


def _final_evals(cfg, members: list[Member], status: str, held: dict, heldout: torch.Tensor, model,
                 source: ModelForwards, periodic_lm) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per SAE: the final held-out metrics (LM metrics only for a finished run) and the last
    ``eval/*`` record, whose LM metrics come from the periodic contexts like the earlier ones."""
    ce_tokens = cfg.training.ce_tokens if status == "finished" else 0
    lm = lm_evaluator(model, heldout, source.keep_mask, ce_tokens, cfg.data.context_size, periodic=False)
    excluded = source.excluded_ids.tolist() if source.excluded_ids is not None else []
    positions = position_summary(heldout, source.keep_mask, model.tokenizer.convert_ids_to_tokens(excluded))
    splices = _splices(members)
    finals = evaluate_saes(splices, held, lm)
    last_lm = periodic_lm(splices) if periodic_lm is not None and status == "finished" else [{} for _ in splices]
    return [({**final, "positions": positions}, eval_record({**final, **extra})) for final, extra in zip(finals, last_lm)]


def _finish_member(cfg, m: Member, status: str, evaluation: dict[str, Any], record: dict[str, Any],
                   source: ModelForwards, train_seconds: float, wall_start: float) -> dict[str, Any]:
    """The folded checkpoint, the last evaluation record and metrics.json of one SAE."""
    folded = m.trainer.folded_copy().eval()
    evaluation = dict(evaluation)
    save_sae(folded, m.dir / SAE_DIR, checkpoint_metadata(cfg, m.spec, m.trainer, status), evaluation.pop("log10_density"))
    metrics: dict[str, Any] = {
        "status": status,
        "train_tokens": m.trainer.tokens,
        "train_seconds": train_seconds,
        "train_tokens_per_second": m.trainer.tokens / max(train_seconds, 1e-9),
        "model_forwards": source.forwards,
        **evaluation,
    }
    metrics["wall_seconds"] = time.perf_counter() - wall_start
    final = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    m.log.log({**record, **final}, step=m.trainer.step_count)  # one record per step
    m.log.close(metrics)
    (m.dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _d_out(spec: MemberSpec, held: dict[str, torch.Tensor]) -> int | None:
    """The reconstructed width for a transcoder (hooks differ), None for an SAE."""
    return held[spec.hook_out].shape[1] if spec.hook_out != spec.hook_in else None


def _prefetch_forwards(cfg: DictConfig) -> int:
    """``activations.prefetch_tokens`` as whole forwards of ``batch_contexts`` contexts."""
    per_forward = cfg.activations.batch_contexts * cfg.data.context_size
    return -(-cfg.activations.prefetch_tokens // per_forward)


def _next_multiple(tokens: int, every: int) -> int | None:
    return (tokens // every + 1) * every if every else None


def _wandb_name(cfg: DictConfig, spec: MemberSpec) -> str:
    extra = "".join(f"_{k}{v}" for k, v in spec.sae_options.items() if isinstance(OmegaConf.select(cfg, f"sae.{k}"), list))
    return f"{cfg.model.name}/{spec.hook_in}/{spec.sae_options['architecture']}{extra}"


def _tags(cfg: DictConfig, spec: MemberSpec) -> list[str]:
    return [cfg.model.name, spec.hook_in, spec.sae_options["architecture"], f"layer{spec.layer}"]


def _concat(batches) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for name, tensor in batch.items():
            parts.setdefault(name, []).append(tensor)
    return {name: torch.cat(tensors) for name, tensors in parts.items()}
