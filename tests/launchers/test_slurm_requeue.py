"""SLURM preemption through the real single-node cluster of ``test_slurm``: a training job signalled
the way SLURM warns before a time limit (SIGUSR2, submitit's pre-timeout signal) checkpoints, is
requeued by submitit, resumes by itself and ends with the SAE of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.launchers.test_slurm import slurm_cluster  # noqa: F401  (the session fixture, used by name)
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

ARGS = [o for o in TINY if not o.startswith("tokens=")] + ["tokens=40960", "training.eval_every=0", "layer=2"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_preempted_slurm_job_is_requeued_and_resumes_to_the_uninterrupted_sae(slurm_cluster, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=slurm", *ARGS, f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait(lambda: any(sweep.glob("*/metrics.jsonl")) and next(sweep.glob("*/metrics.jsonl")).stat().st_size > 0
          or launcher.poll() is not None, 300, "the job to start training")
    assert launcher.poll() is None, launcher.communicate()[0]
    job_dir = next(sweep.glob("*/metrics.jsonl")).parent
    job_id = next((sweep / ".submitit").iterdir()).name.split("_")[0]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what sbatch --signal sends before the time limit

    straight = tmp_path / "straight"  # meanwhile: the same config, never interrupted, in this process
    done = subprocess.run([sys.executable, "-m", "saes.train", f"hydra.run.dir={straight}", *ARGS], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    out, _ = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, out
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "preempted: saving a resumable checkpoint" in logs and "resuming" in logs  # it really stopped and came back
    deadline = time.time() + 60  # sacct lags squeue by a second or two
    while True:
        acct = subprocess.run(["sacct", "-n", "-X", "--duplicates", "-j", job_id, "-o", "State"], capture_output=True,
                              text=True).stdout.split()
        if acct == ["REQUEUED", "COMPLETED"] or time.time() > deadline:
            break
        time.sleep(1)
    assert acct == ["REQUEUED", "COMPLETED"], acct  # SLURM's record: the job ran twice
    got = load_file(job_dir / "sae" / "sae_weights.safetensors")
    want = load_file(straight / "sae" / "sae_weights.safetensors")
    for name in want:
        assert (got[name] == want[name]).all(), name  # bit for bit: the requeued job resumed exactly
