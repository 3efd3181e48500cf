"""A whole training run: model -> activations -> SAE steps -> evaluation -> checkpoint.

Writes into ``run_dir``: ``sae/`` (SAELens v6 format, normalization folded in),
``metrics.jsonl`` (periodic training and evaluation records), ``metrics.json`` (final
evaluation and throughput) and ``config.yaml`` (the resolved config). Ctrl-C or SIGTERM saves a
loadable checkpoint of the SAE as trained so far before exiting.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from saes.activations import ActivationSource, HookError, ShuffleBuffer
from saes.data import load_corpus
from saes.errors import ConfigError
from saes.evaluation import lm_metrics, log10_density, reconstruction_metrics
from saes.models import load_model, resolve_device
from saes.sae.formats import save_sae
from saes.sae.registry import build
from saes.training.metrics_log import MetricsLog
from saes.training.schedules import SCHEDULES
from saes.training.trainer import AUTOCAST_DTYPES, B_DEC_INITS, SAETrainer

SAE_DIR = "sae"


class Interrupted(Exception):
    """Raised by the SIGTERM handler so the loop saves before exiting."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def hook_names(cfg: DictConfig) -> tuple[str, str]:
    """``(hook_in, hook_out)`` of the configured site."""
    return cfg.site.hook_in, cfg.site.hook_out or cfg.site.hook_in


def validate_config(cfg: DictConfig) -> None:
    """Fail before loading anything on settings that cannot work, naming the key."""
    if not 0 <= cfg.layer < cfg.model.n_layers:
        raise HookError(f"layer={cfg.layer} is out of range: {cfg.model.name} has {cfg.model.n_layers} layers (0-{cfg.model.n_layers - 1})")
    with torch.device("meta"):  # checks the variant's options without allocating weights
        build(OmegaConf.to_container(cfg.sae, resolve=True), d_in=cfg.model.d_model)
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


def checkpoint_metadata(cfg: DictConfig, trainer: SAETrainer, status: str) -> dict[str, Any]:
    """SAELens ``metadata`` plus what saes needs to evaluate/analyze the SAE later."""
    hook_in, hook_out = hook_names(cfg)
    return {
        "model_name": cfg.model.source,
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "hook_head_index": None,
        "context_size": cfg.data.context_size,
        "prepend_bos": True,
        "dataset_path": cfg.data.path or cfg.data.source,
        "exclude_special_tokens": cfg.data.exclude_special,
        "training_tokens": trainer.tokens,
        "activation_scale_folded": trainer.scale_in,
        "status": status,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def run_training(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured SAE; returns the final metrics (also written to metrics.json)."""
    wall_start = time.perf_counter()
    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    hook_in, hook_out = hook_names(cfg)

    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    excluded = corpus.special_ids() if cfg.data.exclude_special else None
    source = ActivationSource(model, [hook_in, hook_out], excluded, device=device)

    heldout = corpus.heldout_contexts(cfg.training.eval_tokens)
    held = _concat(source.stream(iter(heldout), cfg.activations.batch_contexts))
    held_x, held_y = held[hook_in], held[hook_out]

    contexts = (context for _, context in corpus.train_contexts())
    forwards = _until_rows(source.stream(contexts, cfg.activations.batch_contexts), cfg.tokens)
    batches = ShuffleBuffer(min(cfg.activations.buffer_tokens, cfg.tokens), generator).batches(
        forwards, cfg.training.batch_size
    )
    start = time.perf_counter()  # throughput counts every training forward, buffer fill included
    first = list(itertools.islice(batches, max(1, cfg.training.norm_estimate_tokens // cfg.training.batch_size)))
    sample = _concat(iter(first))

    d_out = held_y.shape[1] if hook_out != hook_in else None  # a transcoder when the hooks differ
    sae = build(OmegaConf.to_container(cfg.sae, resolve=True), d_in=held_x.shape[1], d_out=d_out).to(device)
    trainer = SAETrainer(sae, cfg.optimizer, cfg.training, cfg.tokens)
    trainer.initialize_from_data(sample[hook_in], sample[hook_out] if hook_out != hook_in else sample[hook_in], generator)

    name = f"{cfg.model.name}/{hook_in}/{cfg.sae.architecture}"
    log = MetricsLog(run_dir, cfg.logger, name, _flat(OmegaConf.to_container(cfg, resolve=True)))
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    status = "finished"
    try:
        _loop(cfg, trainer, itertools.chain(first, batches), hook_in, hook_out, log, held_x, held_y, run_dir)
    except (KeyboardInterrupt, Interrupted) as err:
        status = "interrupted"
        print(f"\n{type(err).__name__}: saving the SAE trained on {trainer.tokens} tokens to {run_dir / SAE_DIR}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    train_seconds = time.perf_counter() - start

    folded = trainer.folded_copy().eval()
    recon = reconstruction_metrics(folded, held_x, held_y)
    counts = recon.pop("firing_counts")
    save_sae(folded, run_dir / SAE_DIR, checkpoint_metadata(cfg, trainer, status), log10_density(counts, held_x.shape[0]))
    metrics: dict[str, Any] = {
        "status": status,
        "train_tokens": trainer.tokens,
        "train_seconds": train_seconds,
        "train_tokens_per_second": trainer.tokens / max(train_seconds, 1e-9),
        "model_forwards": source.forwards,
        **recon,
    }
    if status == "finished" and cfg.training.ce_tokens > 0:
        ce_contexts = heldout[: max(1, cfg.training.ce_tokens // cfg.data.context_size)]
        metrics.update(lm_metrics(model, folded, hook_in, hook_out, ce_contexts, source.keep_mask))
    metrics["wall_seconds"] = time.perf_counter() - wall_start
    log.log({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=trainer.step_count)
    log.close(metrics)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if status == "interrupted":
        raise SystemExit(130)
    return metrics


def _loop(cfg, trainer: SAETrainer, batches: Iterator, hook_in: str, hook_out: str, log: MetricsLog, held_x, held_y,
          run_dir: Path) -> None:
    next_eval = cfg.training.eval_every or None
    next_checkpoint = cfg.training.checkpoint_every or None
    with tqdm(total=cfg.tokens, unit="tok", unit_scale=True, dynamic_ncols=True, desc="train", smoothing=0, mininterval=0.5) as bar:
        for batch in batches:
            if trainer.tokens >= cfg.tokens:
                break
            x = batch[hook_in]
            out = trainer.step(x, x if hook_out == hook_in else batch[hook_out])
            bar.update(x.shape[0])
            if trainer.step_count % cfg.logger.log_every == 0:
                dead = trainer.dead_mask().float().mean().item()
                record = {"train/ev": 1 - out.losses["fvu"], "train/l0": out.l0, "train/dead": dead,
                          "train/loss": out.loss.item(), "train/lr": trainer.optimizer.param_groups[0]["lr"],
                          "train/tokens": trainer.tokens, **{f"train/{k}": v for k, v in out.losses.items()}}
                log.log(record, step=trainer.step_count)
                bar.set_postfix(loss=f"{record['train/loss']:.3f}", ev=f"{record['train/ev']:.3f}", l0=f"{out.l0:.1f}", dead=f"{100 * dead:.1f}%")
            if next_eval is not None and trainer.tokens >= next_eval:
                next_eval += cfg.training.eval_every
                recon = reconstruction_metrics(trainer.folded_copy().eval(), held_x, held_y)
                recon.pop("firing_counts")
                log.log({f"eval/{k}": v for k, v in recon.items()}, step=trainer.step_count)
            if next_checkpoint is not None and trainer.tokens >= next_checkpoint:
                next_checkpoint += cfg.training.checkpoint_every
                save_sae(trainer.folded_copy(), run_dir / "checkpoints" / str(trainer.tokens),
                         checkpoint_metadata(cfg, trainer, "intermediate"))


def _until_rows(stream: Iterator[dict[str, torch.Tensor]], rows: int) -> Iterator[dict[str, torch.Tensor]]:
    """Pass activation batches through until ``rows`` rows have been produced (no wasted forwards)."""
    produced = 0
    for batch in stream:
        yield batch
        produced += next(iter(batch.values())).shape[0]
        if produced >= rows:
            return


def _concat(batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for name, tensor in batch.items():
            parts.setdefault(name, []).append(tensor)
    return {name: torch.cat(tensors) for name, tensors in parts.items()}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b": value}`` so W&B can compare runs key by key."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
