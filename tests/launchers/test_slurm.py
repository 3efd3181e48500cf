"""A real single-node SLURM cluster (Debian slurm-wlm + munge + slurmdbd), started by the tests,
runs a 2-layer sweep of ``python -m saes.train -m launcher=slurm``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import saes

from tests.conftest import REPO
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

SCRIPT = REPO / "scripts" / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a local SLURM cluster needs root and apt-get to install and start slurmctld/slurmd/munge")
    subprocess.run(["bash", str(SCRIPT), "install"], check=True, timeout=600, capture_output=True)
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, timeout=180, capture_output=True)
    yield
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "stop"], timeout=120, capture_output=True)


def test_two_layer_sweep_runs_as_two_slurm_jobs(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=slurm", "layer=1-2", *TINY, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_dirs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(job_dirs) == 2, list(sweep.iterdir())
    layers = set()
    for d in job_dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "finished"
        cfg = json.loads((d / "sae" / "cfg.json").read_text())
        layers.add(cfg["metadata"]["hook_name"])
        assert saes.load(d).d_in == 576
    assert layers == {"blocks.1.hook_resid_post", "blocks.2.hook_resid_post"}
    # the jobs really went through SLURM: submitit wrote one sbatch log folder per array task
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    ids = {p.name.split("_")[0] for p in logs}
    deadline = time.time() + 60  # sacct lags squeue by a second or two
    while True:
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j", ",".join(ids)], capture_output=True, text=True)
        if acct.stdout.count("COMPLETED") == 2 or time.time() > deadline:
            break
        time.sleep(1)
    assert acct.stdout.count("COMPLETED") == 2, acct.stdout


def test_local_gpus_without_a_gpu_says_what_to_use(tmp_path):
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=local_gpus", "layer=1-2", *TINY, f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert "found no CUDA GPU" in proc.stderr and "launcher=local" in proc.stderr
