"""Distributed training (2 gloo ranks on CPU) through the real single-node SLURM cluster of
``test_slurm`` (its fixture): one Hydra job as one submitit job with 2 tasks, and the same ranks
started by a plain ``sbatch`` + ``srun`` batch script, without submitit."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import saes
from tests.distributed.harness import free_port
from tests.conftest import REPO
from tests.launchers.test_slurm import slurm_cluster  # noqa: F401  (the session fixture, used by name)
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

ONE_RANK_FORWARDS = 9
"""What one rank alone forwards for TINY: 8,192 training tokens at 8 x 128 tokens per forward, plus
the held-out one. A rank of a 2-rank job forwards only its half of the corpus: fewer."""

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


def _job_env() -> dict[str, str]:
    """The environment a job inherits (sbatch exports the submitter's): one thread per rank (2 ranks
    on 2 cores), and none of torchrun's or submitit's variables, so that SLURM's decide the ranks."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return {**env, "OMP_NUM_THREADS": "1"}


def _sacct(job_id: str, done, timeout: float = 60) -> str:
    """``sacct`` rows (JobID|State|NTasks) of the job and its steps once ``done(rows)`` holds (sacct lags squeue)."""
    deadline = time.time() + timeout
    while True:
        acct = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,State,NTasks", "-j", job_id],
                              check=False, capture_output=True, text=True).stdout
        if done(acct) or time.time() > deadline:
            return acct
        time.sleep(1)


def _ran_on_two_tasks(job_id: str):
    """A check for ``_sacct``: the job COMPLETED and its first srun step ran 2 tasks."""
    return lambda acct: f"{job_id}|COMPLETED|" in acct and f"{job_id}.0|COMPLETED|2" in acct


def _check_finished(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train_tokens"] >= 8192, metrics
    assert (run / "sae").is_dir() and saes.load(run).d_in == 576
    # rank 0 forwarded only its share of the corpus: a 1-rank run of TINY cannot have done this
    assert metrics["model_forwards"] < ONE_RANK_FORWARDS, metrics["model_forwards"]
    return metrics


def test_one_hydra_job_runs_as_one_slurm_job_with_two_ranks(slurm_cluster, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=slurm", "hydra.launcher.tasks_per_node=2",
           "distributed=data", *TINY, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_job_env(), check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_dirs = [p.parent for p in sweep.glob("*/metrics.json")]
    assert len(job_dirs) == 1, list(sweep.iterdir())  # one Hydra job, not one per rank
    (run,) = job_dirs
    _check_finished(run)

    # one SLURM job whose srun step ran 2 tasks: submitit wrote a log and a result per task, and
    # each task's JobEnvironment names its global rank of 2
    first = list((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(first) == 1, list((sweep / ".submitit").rglob("*"))
    job_id = first[0].name.rsplit("_", 2)[0]
    folder = first[0].parent
    for task in (0, 1):
        log = (folder / f"{job_id}_{task}_log.out").read_text()
        assert f"global_rank={task}(2)" in log, log
        assert "Job completed successfully" in log, log
        assert (folder / f"{job_id}_{task}_result.pkl").exists()
    assert not (folder / f"{job_id}_2_log.out").exists()
    assert "SAE saved to" in (folder / f"{job_id}_0_log.out").read_text()  # rank 0 reports, rank 1 does not
    assert "SAE saved to" not in (folder / f"{job_id}_1_log.out").read_text()
    acct = _sacct(job_id, _ran_on_two_tasks(job_id))
    assert _ran_on_two_tasks(job_id)(acct), acct


BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name=saes-srun
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --output={out}
#SBATCH --chdir={repo}
export MASTER_PORT={port}  # a free port of our choosing (else submitit derives one from the job id)
srun {cmd}
"""


def _wait_for_job(job_id: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "-h", "-j", job_id], check=False, capture_output=True, text=True).stdout.strip():
        if time.time() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            pytest.fail(f"SLURM job {job_id} still queued or running after {timeout:.0f} s (cancelled)")
        time.sleep(1)


def test_srun_ranks_train_one_sae_each(slurm_cluster, tmp_path):  # noqa: F811
    run, out = tmp_path / "run", tmp_path / "slurm-%j.out"
    train = [sys.executable, "-m", "saes.train", "distributed=saes", "layer=1-2", f"hydra.run.dir={run}", *TINY]
    script = tmp_path / "train.sbatch"
    script.write_text(BATCH_SCRIPT.format(out=out, repo=REPO, cmd=shlex.join(train), port=free_port()))
    sub = subprocess.run(["sbatch", "--parsable", str(script)], cwd=REPO, env=_job_env(), check=False,
                         capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    _wait_for_job(job_id, timeout=600)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    acct = _sacct(job_id, _ran_on_two_tasks(job_id))
    assert _ran_on_two_tasks(job_id)(acct), acct + log
    for layer in ("L1", "L2"):
        _check_finished(run / layer)
        cfg = json.loads((run / layer / "sae" / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == f"blocks.{layer[1]}.hook_resid_post"
        assert f"SAE saved to {run / layer / 'sae'}" in log, log


PROBE = "from saes.distributed.context import launched_ranks; print(launched_ranks())"


@pytest.mark.parametrize("extra", [{}, {"MASTER_PORT": "29617"}], ids=["plain", "master_port"])
def test_launched_ranks_under_plain_srun(slurm_cluster, extra):  # noqa: F811
    """Each task of a plain ``srun --ntasks=2`` is its own rank of 2 (a few seconds, no model); a
    python run by the batch script itself (no job step) is no rank."""
    proc = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", sys.executable, "-c", PROBE], cwd=REPO,
                          env={**_job_env(), **extra}, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RankInfo(rank=0, world=2, local_rank=0)" in proc.stdout and "RankInfo(rank=1, world=2, local_rank=1)" in proc.stdout


def test_the_batch_script_of_a_multi_task_job_is_no_rank(slurm_cluster, tmp_path):  # noqa: F811
    """``python`` run by an ``--ntasks=2`` batch script without ``srun`` trains alone instead of
    waiting for a rank 1 that never starts."""
    out = tmp_path / "probe.out"
    sub = subprocess.run(["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", f"--output={out}", f"--chdir={REPO}",
                          "--wrap", f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}"],
                         env=_job_env(), check=False, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    _wait_for_job(sub.stdout.strip().split(";")[0], timeout=300)
    assert "RankInfo(rank=0, world=1, local_rank=0)" in out.read_text(), out.read_text()
