"""Shared fixtures and helpers of the activation-cache tests (tests/activations/test_cache_*.py):
one cache (40,000 rows of ``blocks.3.hook_resid_post``, 5 shards of 64 contexts) written once per
session through the real ``python -m saes.cache`` on the default model; tests that change a cache
work on copies."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import saes
from tests.conftest import REPO


HOOK = "blocks.3.hook_resid_post"
D_MODEL = 576
TOKENS = 40_000
SHARD_TOKENS = 8192
SHARD_CONTEXTS = SHARD_TOKENS // 128  # default data.context_size
BATCH_CONTEXTS = 32  # default cache.batch_contexts
CACHE_ARGS = [f"tokens={TOKENS}", f"cache.shard_tokens={SHARD_TOKENS}"]
TRAIN_FAST = ["logger=none", "training.eval_tokens=1024", "training.ce_tokens=0", "training.periodic_ce_tokens=0",
              "activations.buffer_tokens=16384", "sae.expansion_factor=2"]


# --------------------------------------------------------------------------------------------- helpers

def _default_sigint() -> None:
    # a test runner started as a background job inherits SIGINT ignored: restore the default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cache_cmd(folder: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "saes.cache", f"cache.path={folder}", *CACHE_ARGS, *overrides]


def _train_cmd(run_dir: Path, cache: Path | None, *overrides: str) -> list[str]:
    path = [f"activations.path={cache}"] if cache is not None else []
    return [sys.executable, "-m", "saes.train", f"hydra.run.dir={run_dir}", "activations=cache", *path, *TRAIN_FAST,
            *overrides]


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=_default_sigint)


def _ok(cmd: list[str]) -> str:
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _fails_cleanly(cmd: list[str]) -> str:
    """Exit code 2, a one-line error and no traceback; returns the output."""
    proc = _run(cmd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    return out


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _shard(folder: Path, i: int) -> Path:
    return folder / "shards" / f"{i:05d}"


def _shard_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "shards").iterdir() if p.is_dir() and not p.name.startswith("."))


def _rows(folder: Path, i: int) -> np.ndarray:
    return np.load(_shard(folder, i) / f"{HOOK}.npy")


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.int32).tobytes()).hexdigest()


def _row_keys(rows) -> list[bytes]:
    rows = rows.numpy() if isinstance(rows, torch.Tensor) else rows
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return [r.tobytes() for r in rows]


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from saes.config import register_configs

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in saes.load(folder).state_dict().items()}


def _no_training_happened(run_dir: Path) -> None:
    for name in ("metrics.jsonl", "metrics.json", "checkpoint", "sae"):
        assert not (run_dir / name).exists(), name


def _copy_manifest(cache: Path, dest: Path, edit) -> Path:
    """A folder holding ``cache``'s plan and an edited copy of its manifest (shards linked)."""
    dest.mkdir()
    shutil.copy(cache / "plan.json", dest / "plan.json")
    (dest / "shards").symlink_to(cache / "shards")
    manifest = json.loads((cache / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """The module's cache, written once by the real CLI (float32)."""
    folder = tmp_path_factory.mktemp("cache")
    out = _ok(_cache_cmd(folder))
    assert "5 shards" in out, out
    return folder


@pytest.fixture(scope="session")
def manifest(cache):
    from saes.activations.cache.manifest import read_manifest

    return read_manifest(cache)


@pytest.fixture(scope="session")
def owners(cache) -> dict[bytes, set[int]]:
    """Row bytes -> the shards holding that row (rows of a few positions repeat across contexts)."""
    owner: dict[bytes, set[int]] = {}
    for i, _ in enumerate(_shard_dirs(cache)):
        for key in _row_keys(_rows(cache, i)):
            owner.setdefault(key, set()).add(i)
    return owner


@pytest.fixture(scope="session")
def corpus(smollm):
    """The training contexts the cache was asked to cover, from the data module (not the cache)."""
    from saes.data import load_corpus

    cfg = _compose("cache", [*CACHE_ARGS, "cache.path=unused"])
    return load_corpus(cfg.data, smollm.tokenizer, cfg.model.bos_token)


def _contexts(corpus, first: int, end: int) -> torch.Tensor:
    from itertools import islice

    return torch.stack([c for _, c in islice(corpus.train_contexts(), first, end)])

