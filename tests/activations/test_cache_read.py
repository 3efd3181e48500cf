"""Reading the activation cache: only manifest shards, the cross-shard shuffle, exact resume of
the stream and of training from it, epochs, and every mismatch between a cache and a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

from tests.activations.conftest import (
    HOOK,
    SHARD_TOKENS,
    TRAIN_FAST,
    _compose,
    _copy_manifest,
    _default_sigint,
    _fails_cleanly,
    _no_training_happened,
    _ok,
    _row_keys,
    _rows,
    _shard,
    _train_cmd,
    _wait_for,
    _weights,
)

pytestmark = pytest.mark.slow  # runs the real model through the CLI


# --------------------------------------------------------------------------------------------- 3. manifest only

def test_only_the_manifests_shards_are_read(cache, tmp_path):
    from saes.activations.cache.manifest import read_manifest
    from saes.activations.cache.reader import CacheStream

    folder = tmp_path / "strays"
    (folder / "shards").mkdir(parents=True)
    shutil.copy(cache / "plan.json", folder / "plan.json")
    for i in range(3):
        _shard(folder, i).symlink_to(_shard(cache, i))
    for i in (3, 4, 5, 99):  # on disk, beyond the manifest: poison
        shutil.copytree(_shard(cache, 4), _shard(folder, i))
        rows = np.load(_shard(folder, i) / f"{HOOK}.npy")
        np.save(_shard(folder, i) / f"{HOOK}.npy", np.full_like(rows, np.nan))
    man = json.loads((cache / "manifest.json").read_text())
    man["shards"] = man["shards"][:3]
    man["rows"] = sum(s["rows"] for s in man["shards"])
    (folder / "manifest.json").write_text(json.dumps(man))

    expected = Counter(k for i in range(3) for k in _row_keys(_rows(cache, i)))
    stream = CacheStream(folder, read_manifest(folder), [HOOK], buffer_rows=16384, batch_size=1000,
                         max_rows=man["rows"], seed=0, prefetch=2)
    got = Counter()
    for batch in stream:
        assert torch.isfinite(batch[HOOK]).all()
        got.update(_row_keys(batch[HOOK]))
    stream.close()
    assert got == expected  # every row of shards 0-2 once, nothing else


def test_the_ranks_of_a_distributed_run_read_disjoint_shards_that_together_are_the_cache(cache, manifest):
    from saes.activations.cache.reader import CacheStream

    def rows(share: tuple[int, int]) -> Counter:
        stream = CacheStream(cache, manifest, [HOOK], buffer_rows=16384, batch_size=1000, max_rows=manifest.rows,
                             seed=0, prefetch=0, share=share)
        got = Counter(k for batch in stream for k in _row_keys(batch[HOOK]))
        stream.close()
        return got

    rank0, rank1 = rows((0, 2)), rows((1, 2))
    everything = Counter(k for i in range(5) for k in _row_keys(_rows(cache, i)))
    assert rank0 + rank1 == everything  # each row once over the two ranks
    assert sum(rank0.values()) > sum(rank1.values()) > 0  # 3 shards and 2 of the 5 (no divisibility needed)


def test_distributed_data_training_reads_the_cache_on_two_ranks(cache, tmp_path):
    from tests.distributed.harness import free_port

    torchrun = str(Path(os.sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc-per-node=2", f"--master-port={free_port()}", "-m", "saes.train", f"hydra.run.dir={tmp_path}",
           "activations=cache", f"activations.path={cache}", *TRAIN_FAST, "distributed=data", "tokens=16384",
           "training.batch_size=512"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train_tokens"] == 16384
    assert metrics["model_forwards"] == 1  # only the held-out set was forwarded: training rows came from the cache


# --------------------------------------------------------------------------------------------- 4. shuffle

def _stream(cache, manifest, seed=0, prefetch=2, buffer_rows=4 * SHARD_TOKENS, max_rows=None, epochs=1):
    from saes.activations.cache.reader import CacheStream

    return CacheStream(cache, manifest, [HOOK], buffer_rows=buffer_rows, batch_size=1024,
                       max_rows=manifest.rows if max_rows is None else max_rows, seed=seed, epochs=epochs, prefetch=prefetch)


def _drain(stream, n: int | None = None) -> list[torch.Tensor]:
    out = []
    while (n is None or len(out) < n) and (batch := stream.next_batch()) is not None:
        out.append(batch[HOOK])
    return out


def test_batches_mix_rows_of_many_shards_and_cover_each_row_once(cache, manifest, owners):
    stream = _stream(cache, manifest)
    batches = _drain(stream)
    stream.close()
    for batch in batches[:4]:
        shards = Counter(next(iter(owners[k])) for k in _row_keys(batch) if len(owners[k]) == 1)
        assert len(shards) >= 4, shards  # a buffer of 4 shards' rows: not one shard's neighbours
        assert max(shards.values()) < 0.5 * batch.shape[0], shards
    all_rows = Counter(k for b in batches for k in _row_keys(b))
    assert all_rows == Counter(k for i in range(5) for k in _row_keys(_rows(cache, i)))


def test_shuffle_is_deterministic_from_the_seed(cache, manifest):
    a, b, c = (_stream(cache, manifest, seed=s) for s in (7, 7, 8))
    first, again, other = _drain(a, 6), _drain(b, 6), _drain(c, 6)
    for s in (a, b, c):
        s.close()
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not any(torch.equal(x, y) for x, y in zip(first, other))


def test_state_dict_mid_stream_resumes_the_exact_batches_with_prefetch(cache, manifest):
    plain = _stream(cache, manifest, prefetch=0, seed=3)
    expected = _drain(plain)
    plain.close()

    ahead = _stream(cache, manifest, prefetch=3, seed=3)
    head = _drain(ahead, 11)  # past the first refill
    time.sleep(0.5)  # the background reader runs ahead of what the buffer has taken
    state = ahead.state_dict()
    tail_here = _drain(ahead)
    ahead.close()

    resumed = _stream(cache, manifest, prefetch=3, seed=3)
    resumed.load_state_dict(state)
    tail_resumed = _drain(resumed)
    resumed.close()
    assert len(head) + len(tail_here) == len(expected) == len(head) + len(tail_resumed)
    for got, want in zip(head + tail_here, expected):
        assert torch.equal(got, want)
    for got, want in zip(tail_resumed, expected[11:]):
        assert torch.equal(got, want)


def test_two_epochs_visit_every_shard_twice_in_two_orders(cache, manifest, monkeypatch):
    from saes.activations.cache import reader

    visited = []
    real = reader.read_shard

    def spy(folder, man, index, hooks):  # records, then reads for real
        visited.append(index)
        return real(folder, man, index, hooks)

    monkeypatch.setattr(reader, "read_shard", spy)
    stream = _stream(cache, manifest, buffer_rows=16384, max_rows=2 * manifest.rows, epochs=2, prefetch=1)
    batches = _drain(stream)
    stream.close()
    assert sum(b.shape[0] for b in batches) == 2 * manifest.rows
    first, second = visited[:5], visited[5:]
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert first != second
    assert first == reader.shard_order(5, 0, 0) and second == reader.shard_order(5, 0, 1)
    counts = Counter(k for b in batches for k in _row_keys(b))
    assert counts == Counter({k: 2 * n for k, n in Counter(k for i in range(5) for k in _row_keys(_rows(cache, i))).items()})


# --------------------------------------------------------------------------------------------- 5./6. training

RUN = ["tokens=45000", "activations.epochs=2", "training.checkpoint_every=16384"]


@pytest.fixture(scope="module")
def straight_run(cache, tmp_path_factory) -> Path:
    """An uninterrupted CLI run of RUN from the module's cache (two passes allowed)."""
    run_dir = tmp_path_factory.mktemp("straight")
    _ok(_train_cmd(run_dir, cache, *RUN))
    return run_dir


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"not bitwise equal: {different}"


def test_training_trains_past_one_pass_over_the_cache(straight_run, manifest):
    done = json.loads((straight_run / "metrics.json").read_text())
    assert done["status"] == "finished" and done["train_tokens"] >= 45000
    assert done["train_tokens"] > manifest.rows  # a second pass, reshuffled (see the two-epoch test above)
    assert done["model_forwards"] == 1  # only the held-out set was forwarded: training rows came from the cache


def test_training_from_the_cache_resumes_exactly_from_its_checkpoint(cache, straight_run, tmp_path):
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_train_cmd(stopped, cache, *RUN), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_default_sigint)  # noqa: PLW1509
    try:
        _wait_for(lambda: (stopped / "checkpoint" / "state.pt").exists() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (stopped / "metrics.json").exists()
    out = _ok(_train_cmd(stopped, cache, *RUN))
    assert "resuming" in out, out
    done, ref = (json.loads((d / "metrics.json").read_text()) for d in (stopped, straight_run))
    assert done["status"] == "finished" and done["train_tokens"] == ref["train_tokens"]
    _assert_same_weights(stopped, straight_run)


def test_ctrl_c_during_a_step_then_rerun_resumes_exactly(cache, straight_run, tmp_path, monkeypatch):
    """Ctrl-C arrives while the SAE steps (where a run from the cache spends its time); the rerun
    must give the uninterrupted run's weights. The SIGINT is real, sent to this process from
    inside the 12th step (fault injection: a deterministic moment for the keypress)."""
    from saes.training.run import run_training
    from saes.training.trainer import SAETrainer

    cfg = _compose("train", ["activations=cache", f"activations.path={cache}", *TRAIN_FAST, *RUN])
    run_dir = tmp_path / "ctrl_c"
    real_step, calls = SAETrainer.step, []

    def step_with_ctrl_c(self, batch):
        calls.append(1)
        if len(calls) == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with monkeypatch.context() as patch:
            patch.setattr(SAETrainer, "step", step_with_ctrl_c)
            with pytest.raises(SystemExit) as stop:
                run_training(cfg, run_dir)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped run_training instead of stopping it with a checkpoint")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == 130
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and 0 < stopped["train_tokens"] < 45000
    assert (run_dir / "checkpoint" / "state.pt").exists()
    out = _ok(_train_cmd(run_dir, cache, *RUN))  # the user re-runs the same command
    assert "resuming" in out, out
    done, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, straight_run))
    assert done["status"] == "finished" and done["train_tokens"] == ref["train_tokens"]
    _assert_same_weights(run_dir, straight_run)


def test_a_budget_over_the_cache_needs_more_epochs(cache, manifest, tmp_path):
    out = _fails_cleanly(_train_cmd(tmp_path / "one", cache, f"tokens={manifest.rows + 1}"))
    assert "activations.epochs=1" in out and str(cache) in out and f"{manifest.rows:,}" in out, out
    out = _fails_cleanly(_train_cmd(tmp_path / "two", cache, f"tokens={2 * manifest.rows + 1}", "activations.epochs=2"))
    assert "activations.epochs=2" in out, out
    _no_training_happened(tmp_path / "one")
    _no_training_happened(tmp_path / "two")




# --------------------------------------------------------------------------------------------- 7. bad input

def _width(manifest: dict) -> None:
    manifest["plan"]["hooks"][HOOK] = 768


def _source(manifest: dict) -> None:
    manifest["plan"]["model"]["source"] = "openai-community/gpt2"


@pytest.mark.parametrize(
    "case, overrides, edit, fragments",
    [("hook", ["layer=4"], None, ["holds hooks ['blocks.3.hook_resid_post']", "'blocks.4.hook_resid_post'"]),
     ("model", ["model=gpt2"], None, ["model.source='embedded:smollm2-135m-instruct'", "model.source='openai-community/gpt2'"]),
     ("model dtype", ["dtype=bfloat16"], None, ["model.dtype='float32'", "model.dtype='bfloat16'"]),
     ("source", [], _source, ["model.source='openai-community/gpt2'", "model.source='embedded:smollm2-135m-instruct'"]),
     ("width", [], _width, ["768", "576", "width"]),
     ("data", ["data.holdout_tokens=1000"], None, ["data.holdout_tokens=50000", "data.holdout_tokens=1000"])],
)
def test_a_cache_that_does_not_match_the_run_fails_before_any_step(cache, tmp_path, case, overrides, edit, fragments):
    folder = _copy_manifest(cache, tmp_path / "cache", edit) if edit else cache
    run_dir = tmp_path / "run"
    out = _fails_cleanly(_train_cmd(run_dir, folder, "tokens=8192", *overrides))
    assert f"the cache {folder}" in out, out
    for fragment in fragments:
        assert fragment in out, out
    _no_training_happened(run_dir)


def test_a_folder_without_a_manifest_or_a_path_fails_before_any_step(cache, tmp_path):
    plan_only = tmp_path / "plan_only"
    plan_only.mkdir()
    shutil.copy(cache / "plan.json", plan_only / "plan.json")
    out = _fails_cleanly(_train_cmd(tmp_path / "a", plan_only, "tokens=8192"))
    assert f"activations.path={plan_only}" in out and "interrupted write (plan.json, no manifest)" in out, out

    empty = tmp_path / "empty"
    empty.mkdir()
    out = _fails_cleanly(_train_cmd(tmp_path / "b", empty, "tokens=8192"))
    assert f"activations.path={empty} holds no cache" in out, out

    out = _fails_cleanly(_train_cmd(tmp_path / "c", tmp_path / "nowhere", "tokens=8192"))
    assert f"activations.path={tmp_path / 'nowhere'}: no such cache folder" in out, out

    out = _fails_cleanly(_train_cmd(tmp_path / "d", None, "tokens=8192"))
    assert "activations=cache needs activations.path=" in out, out
    for name in "abcd":
        _no_training_happened(tmp_path / name)
