"""Writing the activation cache: what the shards hold (bit-exact rows, tokens, positions, bf16
storage), resume after a kill, and the writer's refusals (other caches, full disks)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

from tests.activations.conftest import (
    BATCH_CONTEXTS,
    D_MODEL,
    HOOK,
    SHARD_CONTEXTS,
    SHARD_TOKENS,
    TOKENS,
    _cache_cmd,
    _compose,
    _contexts,
    _fails_cleanly,
    _no_training_happened,
    _ok,
    _rows,
    _sha,
    _shard,
    _shard_dirs,
    _train_cmd,
    _wait_for,
)

pytestmark = pytest.mark.slow  # runs the real model through the CLI


# --------------------------------------------------------------------------------------------- 1. contents

def test_shards_hold_the_training_contexts_tokens_and_positions_in_order(cache, corpus):
    shards = _shard_dirs(cache)
    assert [p.name for p in shards] == ["00000", "00001", "00002", "00003", "00004"]
    n_contexts = SHARD_CONTEXTS * len(shards)
    contexts = _contexts(corpus, 0, n_contexts)
    keep = ~torch.isin(contexts, corpus.special_ids())
    total, infos = 0, []
    for i, shard in enumerate(shards):
        tokens = np.load(shard / "tokens.npy")
        where = np.load(shard / "where.npy")
        info = json.loads((shard / "shard.json").read_text())
        infos.append(info)
        first, end = info["contexts"]
        assert first == i * SHARD_CONTEXTS
        assert end == first + SHARD_CONTEXTS or (i == len(shards) - 1 and first < end <= first + SHARD_CONTEXTS)
        ctx = contexts[first:end]
        k = keep[first:end]
        rows_ctx, rows_pos = torch.nonzero(k, as_tuple=True)
        assert tokens.dtype == np.int32 and where.dtype == np.int32
        np.testing.assert_array_equal(tokens, ctx[k].numpy())
        np.testing.assert_array_equal(where[:, 0], (rows_ctx + first).numpy())
        np.testing.assert_array_equal(where[:, 1], rows_pos.numpy())
        assert _rows(cache, i).shape == (tokens.shape[0], D_MODEL) and _rows(cache, i).dtype == np.float32
        assert info["rows"] == tokens.shape[0] and info["tokens_sha256"] == _sha(tokens)
        total += tokens.shape[0]
    # the write stops once `tokens` rows are reached: within the last forward (32 contexts)
    last_batch_rows = int(keep[infos[-1]["contexts"][1] - BATCH_CONTEXTS: infos[-1]["contexts"][1]].sum())
    assert TOKENS <= total < TOKENS + last_batch_rows

    man = json.loads((cache / "manifest.json").read_text())
    assert man["rows"] == total and [s["index"] for s in man["shards"]] == list(range(5))
    assert man["token_fingerprint"] == hashlib.sha256("".join(_sha(np.load(s / "tokens.npy")) for s in shards).encode()).hexdigest()
    assert man["plan"]["hooks"] == {HOOK: D_MODEL} and man["plan"]["dtype"] == "float32"
    norms = np.concatenate([np.linalg.norm(_rows(cache, i).astype(np.float64), axis=1) for i in range(5)])
    assert man["mean_norms"][HOOK] == pytest.approx(norms.mean(), rel=1e-9)


def _hf_resid_post_3(smollm_hf, tokens_BT: torch.Tensor) -> torch.Tensor:
    """Output of block 3 from plain transformers (the forward stops there)."""

    class Stop(Exception):
        pass

    got = {}

    def hook(module, args, output):
        got["h"] = output[0] if isinstance(output, tuple) else output
        raise Stop

    handle = smollm_hf.model.layers[3].register_forward_hook(hook)
    try:
        with torch.no_grad():
            smollm_hf(tokens_BT)
    except Stop:
        pass
    finally:
        handle.remove()
    return got["h"]


def test_rows_read_back_bit_exact_at_float32(cache, manifest, corpus, smollm, smollm_hf):
    from saes.activations import ModelForwards
    from saes.activations.cache.reader import read_shard

    k = 2
    first = k * SHARD_CONTEXTS
    contexts = _contexts(corpus, first, first + SHARD_CONTEXTS)
    keep = ~torch.isin(contexts, corpus.special_ids())
    stored = torch.from_numpy(_rows(cache, k))
    read = read_shard(cache, manifest, k, [HOOK])[HOOK]
    assert read.dtype == torch.float32 and torch.equal(read, stored)

    # the same forwards (batches of cache.batch_contexts contexts) through the pipeline: the same bits
    source = ModelForwards(smollm, [HOOK], corpus.special_ids(), device="cpu")
    ref = torch.cat([source(contexts[i:i + BATCH_CONTEXTS])[HOOK] for i in range(0, SHARD_CONTEXTS, BATCH_CONTEXTS)])
    assert ref.shape == stored.shape
    assert torch.equal(stored, ref)

    # and plain transformers agree (independent of saes) at the kept positions
    hf = _hf_resid_post_3(smollm_hf, contexts[:16])
    torch.testing.assert_close(stored[: int(keep[:16].sum())], hf[keep[:16]], rtol=1e-4, atol=1e-4)


def test_bfloat16_storage_reads_back_as_the_rounded_float32_rows(cache, tmp_path):
    from saes.activations.cache.manifest import read_manifest
    from saes.activations.cache.reader import read_shard

    folder = tmp_path / "bf16"
    _ok([sys.executable, "-m", "saes.cache", f"cache.path={folder}", "tokens=4000", f"cache.shard_tokens={SHARD_TOKENS}",
         "cache.dtype=bfloat16"])
    man = read_manifest(folder)
    assert man.plan.dtype == "bfloat16" and len(man.shards) == 1
    n = man.shards[0].rows
    raw = np.load(_shard(folder, 0) / f"{HOOK}.npy")
    assert raw.shape == (n, D_MODEL) and raw.itemsize == 2  # half the disk
    # its first forward is the float32 cache's first forward: the same contexts, the same batch
    np.testing.assert_array_equal(np.load(_shard(folder, 0) / "tokens.npy"), np.load(_shard(cache, 0) / "tokens.npy")[:n])
    fp32 = torch.from_numpy(_rows(cache, 0)[:n])
    got = read_shard(folder, man, 0, [HOOK])[HOOK]
    assert got.dtype == torch.float32
    assert torch.equal(got, fp32.to(torch.bfloat16).float())
    assert not torch.equal(got, fp32)  # it really was rounded


# --------------------------------------------------------------------------------------------- 2. resume

def test_killed_write_resumes_to_the_uninterrupted_cache(cache, tmp_path):
    folder = tmp_path / "killed"
    proc = subprocess.Popen(_cache_cmd(folder), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _shard(folder, 0).exists() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (folder / "plan.json").exists() and not (folder / "manifest.json").exists()
    assert (_shard(folder, 0) / "shard.json").exists() and not _shard(folder, 4).exists()

    run_dir = tmp_path / "train"
    out = _fails_cleanly(_train_cmd(run_dir, folder, "tokens=8192"))
    assert str(folder) in out and "interrupted write" in out and "python -m saes.cache" in out, out
    _no_training_happened(run_dir)

    kept = (_shard(folder, 0) / "shard.json").stat().st_mtime_ns
    _ok(_cache_cmd(folder))
    assert (_shard(folder, 0) / "shard.json").stat().st_mtime_ns == kept  # the finished shard was not redone
    mine, straight = (json.loads((f / "manifest.json").read_text()) for f in (folder, cache))
    assert mine["token_fingerprint"] == straight["token_fingerprint"]
    assert mine["rows"] == straight["rows"]
    assert mine["shards"] == straight["shards"]
    assert mine["plan"] == straight["plan"]
    assert [p.name for p in _shard_dirs(folder)] == [p.name for p in _shard_dirs(cache)]
    for a, b in zip(_shard_dirs(folder), _shard_dirs(cache)):
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir())
        for name in files:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name}"


def test_a_rerun_removes_the_partial_shard_a_kill_mid_write_left(cache, tmp_path):
    """A SIGKILL while a shard's files are being written leaves its temporary sibling
    (``shards/.<index>-<random>/`` with part of the files); the re-run must not keep it."""
    folder = tmp_path / "cache"
    (folder / "shards").mkdir(parents=True)
    shutil.copy(cache / "plan.json", folder / "plan.json")
    for i in range(5):  # every shard done, the manifest not yet written
        _shard(folder, i).symlink_to(_shard(cache, i))
    stale = folder / "shards" / ".00004-k1lled0x"
    stale.mkdir()
    shutil.copy(_shard(cache, 4) / f"{HOOK}.npy", stale / f"{HOOK}.npy")
    _ok(_cache_cmd(folder))
    assert json.loads((folder / "manifest.json").read_text())["token_fingerprint"] == \
        json.loads((cache / "manifest.json").read_text())["token_fingerprint"]
    assert sorted(p.name for p in (folder / "shards").iterdir()) == sorted(p.name for p in (cache / "shards").iterdir())




def test_the_writer_refuses_a_folder_that_holds_something_else(cache, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    out = _fails_cleanly(_cache_cmd(other))
    assert f"cache.path={other} is not empty" in out, out
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and (other / "notes.txt").read_text() == "mine"

    before = {name: (cache / name).read_bytes() for name in ("plan.json", "manifest.json")}
    out = _fails_cleanly(_cache_cmd(cache, "cache.dtype=bfloat16"))
    assert f"cache.path={cache}" in out and "dtype='float32'" in out and "dtype='bfloat16'" in out, out
    assert {name: (cache / name).read_bytes() for name in before} == before
    assert [p.name for p in _shard_dirs(cache)] == ["00000", "00001", "00002", "00003", "00004"]


def test_the_writer_checks_the_disk_before_the_first_forward(tmp_path, monkeypatch):
    from saes.activations.cache import writer
    from saes.activations.cache.manifest import CacheError
    from saes.errors import ConfigError

    folder = tmp_path / "big"
    cfg = _compose("cache", ["tokens=1000000", f"cache.shard_tokens={SHARD_TOKENS}", f"cache.path={folder}", "device=cpu"])
    asked = []

    def little_free(path):  # fault injection: a disk with 1 GB free
        asked.append(Path(path))
        return shutil._ntuple_diskusage(total=10**12, used=10**12 - 10**9, free=10**9)

    monkeypatch.setattr(writer.shutil, "disk_usage", little_free)
    forwards = []
    real_call = writer.ModelForwards.__call__

    def counted(self, *args, **kwargs):  # a spy: counts, then runs the real forward
        forwards.append(1)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(writer.ModelForwards, "__call__", counted)
    with pytest.raises(ConfigError) as err:
        writer.write_cache(cfg, folder, progress=False)
    assert isinstance(err.value, CacheError)
    # 1,000,000 rows x (576 float32 + int32 token + 2 x int32 position) bytes = 2.316 GB
    assert "needs 2.32 GB" in str(err.value)
    assert "1.00 GB free" in str(err.value) and f"cache.path={folder}" in str(err.value)
    assert asked and all(p == folder for p in asked)
    assert not forwards
    assert list(folder.iterdir()) == []  # no plan, no shard
