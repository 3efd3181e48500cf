"""What a cache folder holds (``manifest.json``, one place for the format) and the checks that a
cache matches the model, data and hooks a run asks for.

Shard ``i`` holds the rows of training contexts ``[i * shard_contexts, (i + 1) * shard_contexts)``
(the last one fewer), so a shard's content follows from the plan alone: a re-run rewrites exactly
the shards that are missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saes.atomic import atomic_write_text
from saes.errors import ConfigError

FORMAT = 1
PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"
TOKENS_FILE = "tokens.npy"
WHERE_FILE = "where.npy"
STORAGE_DTYPES = {"float32": (torch.float32, np.float32), "float16": (torch.float16, np.float16),
                  "bfloat16": (torch.bfloat16, np.uint16)}
"""Storage dtype -> (torch dtype, numpy dtype on disk); numpy has no bfloat16: its bits as uint16."""


class CacheError(ConfigError):
    """A cache folder is incomplete, corrupt, or does not match what a run asks for."""


@dataclass
class CachePlan:
    """What a cache write produces; a re-run must ask for the same to resume it."""

    model: dict[str, Any]
    """``source``, ``name`` and ``dtype`` of the model."""
    data: dict[str, Any]
    """The data config (source, path, context size, held-out split, shuffle seed, ...)."""
    hooks: dict[str, int]
    """Hook -> width."""
    dtype: str
    """Storage dtype of the rows."""
    rows: int
    """Rows to write (the last shard stops once they are reached)."""
    shard_contexts: int
    """Training contexts per shard."""
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardInfo:
    index: int
    rows: int
    contexts: list[int]
    """``[first, end)`` training-context indices."""
    tokens_sha256: str
    norm_sums: dict[str, float]
    """Per hook: the sum of row norms (float64), for the mean norm."""


@dataclass
class Manifest:
    """A complete cache: its plan, its shards and summary statistics."""

    plan: CachePlan
    shards: list[ShardInfo]
    rows: int
    token_fingerprint: str
    """sha256 over the shards' token hashes: the exact token stream the rows came from."""
    mean_norms: dict[str, float]
    """Per hook: mean row norm (float64 accumulation)."""
    saes_version: str
    extra: dict[str, Any] = field(default_factory=dict)


def shard_dir(folder: Path, index: int) -> Path:
    return folder / SHARDS_DIR / f"{index:05d}"


def tokens_sha256(tokens_N: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens_N, dtype=np.int32).tobytes()).hexdigest()


def read_plan(folder: Path) -> CachePlan | None:
    path = folder / PLAN_FILE
    if not path.exists():
        return None
    return CachePlan(**json.loads(path.read_text()))


def write_plan(folder: Path, plan: CachePlan) -> None:
    atomic_write_text(folder / PLAN_FILE, json.dumps(plan.to_json(), indent=2))


def read_shard_info(folder: Path, index: int) -> ShardInfo | None:
    """The shard's record, or None when the shard was never completed."""
    path = shard_dir(folder, index) / SHARD_FILE
    return ShardInfo(**json.loads(path.read_text())) if path.exists() else None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(data, indent=2))


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a complete cache; a missing folder or manifest raises ``CacheError``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CacheError(f"activations.path={folder}: no such cache folder; write one with python -m saes.cache")
    path = folder / MANIFEST_FILE
    if not path.exists():
        plan = "an interrupted write (plan.json, no manifest)" if (folder / PLAN_FILE).exists() else "no cache"
        raise CacheError(f"activations.path={folder} holds {plan}: re-run its python -m saes.cache command to finish it")
    try:
        data = json.loads(path.read_text())
        data["plan"] = CachePlan(**data["plan"])
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise CacheError(f"{path} is not a saes cache manifest ({err}); write the cache again") from None


def check_compatible(folder: Path, manifest: Manifest, model: dict[str, Any], data: dict[str, Any],
                     hooks: dict[str, int | None]) -> None:
    """Raise ``CacheError`` naming the cache, what it holds and what was asked when the cache was
    made by another model, from other data, or lacks a hook or its width (``None``: not checked)."""
    plan = manifest.plan
    for key in ("source", "dtype"):
        if str(plan.model.get(key)) != str(model.get(key)):
            raise CacheError(f"the cache {folder} was made with model.{key}={plan.model.get(key)!r}, "
                             f"this run asks for model.{key}={model.get(key)!r}")
    for key, value in data.items():
        if key in plan.data and plan.data[key] != value:
            raise CacheError(f"the cache {folder} was made from data.{key}={plan.data[key]!r}, this run has "
                             f"data.{key}={value!r} (its held-out split must be the run's): use the cache's data settings "
                             "or write a cache for these")
    for hook, width in hooks.items():
        if hook not in plan.hooks:
            raise CacheError(f"the cache {folder} holds hooks {sorted(plan.hooks)}; this run needs {hook!r}")
        if width is not None and plan.hooks[hook] != width:
            raise CacheError(f"the cache {folder} holds {hook!r} with width {plan.hooks[hook]}; the model's is {width}")
