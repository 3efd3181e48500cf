"""A 2-job sweep through the real single-node SLURM cluster of ``test_slurm`` (its fixture), both
jobs training from one activation cache written once by ``python -m saes.cache``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

import saes
from tests.conftest import REPO
from tests.launchers.test_slurm import slurm_cluster  # noqa: F401  (the session fixture, used by name)
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

HELD_OUT_FORWARDS = 1
"""TINY's held-out set: training.eval_tokens=1024 is 8 contexts of 128, one forward of 8 contexts."""
ON_THE_FLY_FORWARDS = HELD_OUT_FORWARDS + 8
"""What an on-the-fly run of TINY needs: 8,192 training tokens at 8 x 128 tokens per forward, plus the held-out one."""


def _sacct_completed(job_ids: set[str], expected: int, timeout: float = 60) -> str:
    """``sacct`` rows of ``job_ids`` once ``expected`` of them read COMPLETED (sacct lags squeue)."""
    deadline = time.time() + timeout
    while True:
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j", ",".join(sorted(job_ids))],
                              check=False, capture_output=True, text=True)
        if acct.stdout.count("COMPLETED") >= expected or time.time() > deadline:
            return acct.stdout
        time.sleep(1)


def test_two_slurm_jobs_train_from_one_cache(slurm_cluster, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    write = [sys.executable, "-m", "saes.cache", "tokens=8192", "cache.shard_tokens=2048", "cache.batch_contexts=8",
             "data.holdout_tokens=1024", f"cache.path={cache}"]  # TINY's data settings: the held-out split must match
    proc = subprocess.run(write, cwd=REPO, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["rows"] >= 8192 and len(manifest["shards"]) >= 4

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=slurm", "activations=cache", f"activations.path={cache}",
           "sae.k=8,16", *TINY, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_dirs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(job_dirs) == 2, list(sweep.iterdir())

    ks, weights = set(), []
    for d in job_dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["train_tokens"] >= 8192
        # the training rows came from the cache: the model ran only for the held-out set
        assert metrics["model_forwards"] == HELD_OUT_FORWARDS < ON_THE_FLY_FORWARDS, metrics["model_forwards"]
        run_cfg = OmegaConf.load(d / "config.yaml")
        assert (run_cfg.activations.source, run_cfg.activations.path) == ("cache", str(cache))
        cfg = json.loads((d / "sae" / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
        sae = saes.load(d)
        assert sae.d_in == 576
        ks.add(sae.cfg.k)
        weights.append(sae.W_enc_DF.detach())
    assert ks == {8, 16}
    assert not torch.allclose(weights[0], weights[1])  # two different SAEs, not one trained twice

    # the jobs really went through SLURM: submitit wrote one sbatch log folder per array task
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    acct = _sacct_completed({p.name.split("_")[0] for p in logs}, expected=2)
    assert acct.count("COMPLETED") == 2, acct
