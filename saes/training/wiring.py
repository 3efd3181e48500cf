"""Everything a training run needs before its first step: checks, the model and data, the
activation stream, one trainer per SAE, and the resume state (or the data-driven initialisation).

Bad settings fail here before anything is loaded, naming the key (``validate_config``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from saes.activations import ActivationStream, HookError, ModelForwards
from saes.activations.cache.manifest import Manifest, check_compatible, read_manifest
from saes.activations.cache.reader import CacheStream
from saes.activations.model_stream import ModelActivationStream
from saes.config import ActivationSourceKind
from saes.data import Corpus, load_corpus
from saes.distributed.context import check_launch, init_process_group, launched_ranks, rank_device
from saes.distributed.placement import Placement
from saes.errors import ConfigError
from saes.evaluate.held_out import periodic_lm_evaluator
from saes.evaluate.lm import LMEvaluator
from saes.formatting import flatten
from saes.layers import parse_layers
from saes.models import load_model, resolve_device
from saes.sae.registry import build, make_config
from saes.training.checkpoint import load_state
from saes.training.metadata import checkpoint_metadata
from saes.training.metrics_log import MetricsLog
from saes.training.plan import MemberSpec, plan_members
from saes.training.trainer import SAETrainer


@dataclass
class Member:
    """One SAE being trained, with its folder and log."""

    spec: MemberSpec
    dir: Path
    trainer: SAETrainer
    log: MetricsLog | None = None


@dataclass
class TrainingRun:
    """A wired run: what the loop steps and what the finish evaluates."""

    cfg: DictConfig
    run_dir: Path
    model: Any
    """The ``TransformerBridge``."""
    source: ModelForwards
    stream: ActivationStream
    members: list[Member]
    heldout_NT: torch.Tensor
    """Held-out token contexts ``[N, T]``."""
    held: dict[str, torch.Tensor]
    """Held-out activations ``{hook: [rows, D]}`` of every hook of the run."""
    periodic_lm: LMEvaluator | None
    eval_lock: threading.Lock
    """Held while a periodic evaluation runs the model (the stream's background forwards hold it too)."""
    placement: Placement
    """This rank's part of the run (one process: everything)."""
    resumed: bool
    started_at: float
    """``time.perf_counter()`` when training began (the first buffer fill counts as training)."""


def placement_for(cfg: DictConfig) -> Placement:
    """This process's part of the run, from the launcher's environment and ``distributed``."""
    ranks = launched_ranks()
    check_launch(cfg.distributed.strategy, ranks)
    return Placement(cfg.distributed.strategy, ranks)


def validate_config(cfg: DictConfig) -> list[MemberSpec]:
    """Fail before loading anything on settings that cannot work, naming the key; returns the plan
    (every SAE of the run, whichever rank trains it)."""
    for layer in parse_layers(cfg.layer):
        if not 0 <= layer < cfg.model.n_layers:
            raise HookError(f"layer={cfg.layer} is out of range: {cfg.model.name} has {cfg.model.n_layers} layers (0-{cfg.model.n_layers - 1})")
    members = plan_members(cfg)
    for spec in members:
        with torch.device("meta"):  # checks the variant's options without allocating weights
            build(spec.sae_options, d_in=cfg.model.d_model)
    resolve_device(cfg.device)  # an unusable device fails here, before the model loads
    resolve_device(cfg.model.device, "model.device")
    for key in ("tokens", "training.batch_size", "activations.batch_contexts"):
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be positive")
    if cfg.activations.prefetch_tokens < 0:
        raise ConfigError(f"activations.prefetch_tokens={cfg.activations.prefetch_tokens} must be >= 0 (0: no prefetching)")
    if cfg.activations.source == ActivationSourceKind.cache:
        _check_cache(cfg, members)
    elif cfg.activations.path is not None:
        raise ConfigError(f"activations.path={cfg.activations.path} is set but activations.source=model: "
                          "train from it with activations=cache")
    placement_for(cfg).check(cfg, members)
    return members


def _check_cache(cfg: DictConfig, members: list[MemberSpec], widths: dict[str, int] | None = None) -> Manifest:
    """The cache's manifest, once it is known to hold what the run needs (fails naming what
    differs); ``widths``: the model's hook widths, once it is loaded."""
    if not cfg.activations.path:
        raise ConfigError("activations=cache needs activations.path=<cache folder> (written by python -m saes.cache)")
    if cfg.activations.epochs < 1:
        raise ConfigError(f"activations.epochs={cfg.activations.epochs} must be >= 1")
    folder = Path(cfg.activations.path).expanduser()
    manifest = read_manifest(folder)
    hooks = {h: (widths or {}).get(h) for s in members for h in (*s.hooks_in, *s.hooks_out)}
    model = {"source": cfg.model.source, "dtype": str(cfg.model.dtype)}
    check_compatible(folder, manifest, model, OmegaConf.to_container(cfg.data, resolve=True), hooks)
    if cfg.tokens > manifest.rows * cfg.activations.epochs:
        raise ConfigError(f"tokens={cfg.tokens:,} is more than the cache {folder} holds ({manifest.rows:,} rows) times "
                          f"activations.epochs={cfg.activations.epochs}: lower tokens, raise activations.epochs "
                          "(each pass reshuffled) or write a larger cache")
    return manifest


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """Final metrics of every SAE if this run folder already finished, else None."""
    found = {}
    for spec in plan_members(cfg):
        path = run_dir / spec.name / "metrics.json"
        if not path.exists() or json.loads(path.read_text()).get("status") != "finished":
            return None
        found[spec.name] = json.loads(path.read_text())
    return found


def wire_run(cfg: DictConfig, run_dir: Path, specs: list[MemberSpec], group: str | None) -> TrainingRun:
    """Load the model and data, build the stream and this rank's trainers, and resume or initialise
    them (a distributed run joins its process group first)."""
    torch.manual_seed(cfg.seed)
    placement = placement_for(cfg)
    device = rank_device(resolve_device(cfg.device), placement.ranks)
    init_process_group(cfg.distributed, placement.ranks, device)
    model_device = rank_device(resolve_device(cfg.model.device, "model.device"), placement.ranks)
    model = load_model(cfg.model.source, device=model_device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    excluded = corpus.special_ids() if cfg.data.exclude_special else None
    hooks = list(dict.fromkeys(h for s in specs for h in (*s.hooks_in, *s.hooks_out)))
    source = ModelForwards(model, hooks, excluded, device=device)

    heldout = corpus.heldout_contexts(cfg.training.eval_tokens)
    held = _concat(source.stream(iter(heldout), cfg.activations.batch_contexts))
    stream = _stream(cfg, specs, corpus, source, {hook: rows.shape[1] for hook, rows in held.items()}, placement)
    owned = placement.owned(specs, cfg.model.d_model)
    members = [Member(s, run_dir / s.name, _trainer(cfg, s, held, device, placement)) for s in owned]
    state = load_state(run_dir) if cfg.resume else None
    started_at = time.perf_counter()  # throughput counts every training forward, buffer fill included
    if state is not None:
        mine = rank_state(state, placement)
        stream.load_state_dict(mine["stream"])
        for m in members:
            m.trainer.load_state_dict(mine["members"].get(m.spec.name) or state["members"][m.spec.name])
        if placement.is_lead:
            print(f"resuming {run_dir} at {members[0].trainer.tokens:,} tokens")
    else:
        sample = stream.sample(cfg.training.norm_estimate_tokens, cfg.seed)
        for m in members:
            m.trainer.initialize_from_data(sample, torch.Generator().manual_seed(cfg.seed + 1_000_003 * placement.ranks.rank))
            placement.share_initialisation(m.trainer)
    for m in members if placement.logs() else ():
        m.log = MetricsLog(m.dir, cfg.logger, _wandb_name(cfg, m.spec), flatten(checkpoint_metadata(cfg, m.spec, m.trainer, "training")["config"]),
                           group=group or f"{cfg.model.name}_{cfg.sae.architecture}/{run_dir.name}", tags=_tags(cfg, m.spec),
                           wandb_id=(state or {}).get("wandb_ids", {}).get(m.spec.name),
                           resume_step=m.trainer.step_count if state is not None else None)
    periodic_lm = periodic_lm_evaluator(cfg, model, heldout, source.keep_mask)
    return TrainingRun(cfg, run_dir, model, source, stream, members, heldout, held, periodic_lm, source.lock, placement,
                       state is not None, started_at)


def rank_state(state: dict[str, Any], placement: Placement) -> dict[str, Any]:
    """This rank's part of a checkpoint (its stream and the trainers it saved); fails by key when
    the checkpoint was written by another number of ranks."""
    world = state.get("world", 1)
    if world != placement.world:
        raise ConfigError(f"the checkpoint was written by {world} rank(s) and this job has {placement.world}: resume with "
                          f"{world} (torchrun --nproc-per-node / SLURM tasks), or start over with resume=false")
    return state if placement.is_lead else state["ranks"][placement.ranks.rank - 1]


def _stream(cfg: DictConfig, specs: list[MemberSpec], corpus: Corpus, source: ModelForwards,
            widths: dict[str, int], placement: Placement) -> ActivationStream:
    """This rank's training rows from the cache (``activations=cache``; checked against the
    model's hook ``widths``) or from model forwards: its share of the corpus or of the shards."""
    share = (placement.ranks.rank, placement.world)
    batch_size, max_rows = placement.local_batch_size(cfg.training.batch_size), cfg.tokens // placement.world
    buffer_rows = min(cfg.activations.buffer_tokens, max_rows)
    if cfg.activations.source == ActivationSourceKind.cache:
        manifest = _check_cache(cfg, specs, widths)
        shard_rows = max(1, manifest.rows // max(1, len(manifest.shards)))
        prefetch = -(-cfg.activations.prefetch_tokens // shard_rows)
        hooks = list(dict.fromkeys(h for s in specs for h in (*s.hooks_in, *s.hooks_out)))
        return CacheStream(cfg.activations.path, manifest, hooks, buffer_rows, batch_size, max_rows, cfg.seed,
                           cfg.activations.epochs, prefetch, share)
    return ModelActivationStream(corpus, source, cfg.activations.batch_contexts, buffer_rows, batch_size,
                                 max_rows, cfg.seed, _prefetch_forwards(cfg), share)


def _trainer(cfg: DictConfig, spec: MemberSpec, held: dict[str, torch.Tensor], device: str, placement: Placement) -> SAETrainer:
    """A trainer for ``spec`` with a freshly built dictionary of the hooks' widths (this rank's
    shard of it under ``distributed=latents``)."""
    d_in = held[spec.hook_in].shape[1]
    d_out = held[spec.hook_out].shape[1] if spec.hooks_out != spec.hooks_in else None  # a transcoder
    if placement.sharded:
        from saes.distributed.latents import LatentShardedSAE

        sae = LatentShardedSAE.build(make_config(spec.sae_options), d_in, d_out).to(device)
    else:
        sae = build(spec.sae_options, d_in, d_out).to(device)
    return SAETrainer(sae, cfg.optimizer, cfg.training, cfg.tokens, spec.hooks_in, spec.hooks_out, placement.step_sync())


def _prefetch_forwards(cfg: DictConfig) -> int:
    """``activations.prefetch_tokens`` as whole forwards of ``batch_contexts`` contexts."""
    per_forward = cfg.activations.batch_contexts * cfg.data.context_size
    return -(-cfg.activations.prefetch_tokens // per_forward)


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
