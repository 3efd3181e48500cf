"""Write a cache: one pass of the model over the training contexts (stopped after the deepest
hooked block), every hook's rows into fixed-size shards in the storage dtype, the manifest last.

Resumable: ``plan.json`` fixes what shard ``i`` holds, each shard folder appears atomically, and a
re-run with the same settings starts at the first missing shard; other settings in the same
folder fail, naming the key. The disk space needed is checked before the first forward.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import saes
from saes.activations.cache.manifest import (
    SHARD_FILE, SHARDS_DIR, STORAGE_DTYPES, TOKENS_FILE, WHERE_FILE, CacheError, CachePlan, Manifest, ShardInfo, read_plan,
    read_shard_info, shard_dir, tokens_sha256, write_manifest, write_plan,
)
from saes.activations.forward import ModelForwards
from saes.activations.hooks import probe_hook_width
from saes.atomic import atomic_directory
from saes.data import load_corpus
from saes.errors import ConfigError
from saes.layers import site_hooks
from saes.models import load_model

BYTES_PER_ROW_EXTRA = 4 + 8
"""Token id (int32) and (context, position) (2 x int32) stored with every row."""


def write_cache(cfg: DictConfig, folder: Path, progress: bool = True) -> Manifest:
    """Write (or finish) the cache of ``cfg`` (``conf/cache.yaml``) into ``folder``; returns its manifest."""
    if cfg.tokens <= 0 or cfg.cache.shard_tokens <= 0 or cfg.cache.batch_contexts <= 0:
        raise ConfigError("tokens, cache.shard_tokens and cache.batch_contexts must be positive")
    hooks = site_hooks(cfg.site, cfg.layer)
    folder.mkdir(parents=True, exist_ok=True)
    if read_plan(folder) is None and any(folder.iterdir()):  # before the model loads
        raise CacheError(f"cache.path={folder} is not empty and holds no cache plan; choose an empty folder")
    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    excluded = corpus.special_ids() if cfg.data.exclude_special else None
    source = ModelForwards(model, hooks, excluded, device="cpu")  # validates the hooks, naming near misses
    widths = {hook: probe_hook_width(model, hook) for hook in hooks}
    plan = CachePlan(
        model={"source": cfg.model.source, "name": cfg.model.name, "dtype": str(cfg.model.dtype)},
        data=OmegaConf.to_container(cfg.data, resolve=True), hooks=widths, dtype=str(cfg.cache.dtype),
        rows=int(cfg.tokens), shard_contexts=max(1, cfg.cache.shard_tokens // cfg.data.context_size),
    )
    _check_plan(folder, plan)
    _remove_partial_shards(folder)
    done = _completed_shards(folder)
    written = sum(s.rows for s in done)
    _check_disk(folder, plan, plan.rows - written)
    write_plan(folder, plan)

    torch_dtype, _ = STORAGE_DTYPES[plan.dtype]
    start = time.perf_counter()
    with tqdm(total=plan.rows, initial=min(written, plan.rows), unit="tok", unit_scale=True, desc="cache",
              disable=not progress, smoothing=0, mininterval=0.5) as bar:
        contexts = (context for _, context in corpus.train_contexts(skip=len(done) * plan.shard_contexts))
        while written < plan.rows:
            index = len(done)
            info = _write_shard(folder, index, plan, islice(contexts, plan.shard_contexts), source,
                                cfg.cache.batch_contexts, plan.rows - written, torch_dtype)
            if info is None:
                raise CacheError(f"the dataset ran out after {written:,} rows; lower tokens= or use more data")
            done.append(info)
            written += info.rows
            bar.update(info.rows)
    manifest = _manifest(plan, done, time.perf_counter() - start)
    write_manifest(folder, manifest)
    return manifest


def _check_plan(folder: Path, plan: CachePlan) -> None:
    """A folder holding another cache (or another plan) fails naming the first differing key."""
    old = read_plan(folder)
    if old is None:  # an empty folder (checked before the model loaded)
        return
    mine, theirs = plan.to_json(), old.to_json()
    for key in mine:
        if mine[key] != theirs.get(key):
            raise CacheError(f"cache.path={folder} holds a cache with {key}={theirs.get(key)!r}; this command asks for "
                             f"{key}={mine[key]!r}: re-run the original command to finish it, or choose another cache.path")


def _remove_partial_shards(folder: Path) -> None:
    """Drop what a killed write left: temporary shard folders (``shards/.<i>-*``, ``.<i>.old``)."""
    shards = folder / SHARDS_DIR
    for leftover in shards.glob(".*") if shards.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def _completed_shards(folder: Path) -> list[ShardInfo]:
    """Shards 0..k-1 that are complete (a shard folder exists only once it is whole)."""
    done = []
    while (info := read_shard_info(folder, len(done))) is not None:
        done.append(info)
    return done


def _check_disk(folder: Path, plan: CachePlan, rows_left: int) -> None:
    """Say how much disk the write needs; refuse to start when the disk has less."""
    itemsize = torch.empty(0, dtype=STORAGE_DTYPES[plan.dtype][0]).element_size()
    need = max(0, rows_left) * (sum(plan.hooks.values()) * itemsize + BYTES_PER_ROW_EXTRA)
    free = shutil.disk_usage(folder).free
    print(f"cache: {plan.rows:,} rows of {len(plan.hooks)} hook(s) {sorted(plan.hooks)} in {plan.dtype}; "
          f"{need / 1e9:.2f} GB to write into {folder} ({free / 1e9:.1f} GB free)")
    if need > free:
        raise CacheError(f"cache.path={folder}: the cache needs {need / 1e9:.2f} GB but the disk has {free / 1e9:.2f} GB free; "
                         "free space, lower tokens= or store cache.dtype=bfloat16")


def _write_shard(folder: Path, index: int, plan: CachePlan, contexts: Iterator[torch.Tensor],
                 source: ModelForwards, batch_contexts: int, rows_wanted: int, torch_dtype: torch.dtype) -> ShardInfo | None:
    """Forward one shard's contexts (training contexts ``index * shard_contexts`` on) and write its
    folder atomically; None when no context is left."""
    parts: dict[str, list[torch.Tensor]] = {hook: [] for hook in plan.hooks}
    tokens, where, rows = [], [], 0
    first = end = index * plan.shard_contexts
    while rows < rows_wanted and (batch := list(islice(contexts, batch_contexts))):
        ids = torch.arange(end, end + len(batch))
        tokens_BT = torch.stack(batch)
        keep_BT = source.keep_mask(tokens_BT)
        for hook, rows_ND in source(tokens_BT).items():
            parts[hook].append(rows_ND)
        tokens.append(tokens_BT[keep_BT])
        positions_BT = torch.arange(tokens_BT.shape[1]).expand_as(tokens_BT)
        where.append(torch.stack([ids[:, None].expand_as(tokens_BT)[keep_BT], positions_BT[keep_BT]], dim=1))
        end += len(batch)
        rows += int(keep_BT.sum())
    if end == first:
        return None
    tokens_N = torch.cat(tokens).to(torch.int32).numpy()
    with atomic_directory(shard_dir(folder, index)) as tmp:
        norm_sums = {}
        for hook, chunks in parts.items():
            rows_ND = torch.cat(chunks)
            norm_sums[hook] = float(rows_ND.double().norm(dim=1).sum())
            np.save(tmp / f"{hook}.npy", _to_storage(rows_ND, torch_dtype))
        np.save(tmp / TOKENS_FILE, tokens_N)
        np.save(tmp / WHERE_FILE, torch.cat(where).to(torch.int32).numpy())
        info = ShardInfo(index, int(tokens_N.shape[0]), [first, end], tokens_sha256(tokens_N), norm_sums)
        (tmp / SHARD_FILE).write_text(json.dumps(asdict(info)))
    return info


def _to_storage(rows_ND: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    rows = rows_ND.to(dtype).contiguous()
    return rows.view(torch.uint16).numpy() if dtype == torch.bfloat16 else rows.numpy()


def _manifest(plan: CachePlan, shards: list[ShardInfo], seconds: float) -> Manifest:
    rows = sum(s.rows for s in shards)
    fingerprint = hashlib.sha256("".join(s.tokens_sha256 for s in shards).encode()).hexdigest()
    means = {hook: sum(s.norm_sums[hook] for s in shards) / max(rows, 1) for hook in plan.hooks}
    return Manifest(plan, shards, rows, fingerprint, means, saes.__version__,
                    extra={"last_write_seconds": round(seconds, 3), "bytes": _bytes(plan, rows)})


def _bytes(plan: CachePlan, rows: int) -> int:
    itemsize = torch.empty(0, dtype=STORAGE_DTYPES[plan.dtype][0]).element_size()
    return int(rows * (sum(plan.hooks.values()) * itemsize + BYTES_PER_ROW_EXTRA))

