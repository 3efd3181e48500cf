"""``torchrun --nproc-per-node 2 -m saes.train distributed=...`` end to end on the real model, two
real gloo ranks: each strategy trains and saves loadable SAEs; a stop signal on one rank
checkpoints every rank and the run resumes (on the same number of ranks only); a killed rank fails
the job in bounded time naming it; bad launches fail by key before the model loads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saes

from tests.conftest import REPO
from tests.distributed.harness import free_port
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # real model, real ranks (deselect with -m 'not slow')

TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores


LONGER = [o for o in TINY if not o.startswith("tokens=")] + ["tokens=60000"]  # ~20 s of training


def _torchrun(run_dir: Path, *overrides: str, nproc: int = 2, base: list[str] = TINY) -> list[str]:
    return [str(TORCHRUN), f"--nproc-per-node={nproc}", f"--master-port={free_port()}", "-m", "saes.train",
            f"hydra.run.dir={run_dir}", *base, *overrides]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)


def _finished(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    return metrics


def _workers(proc: subprocess.Popen) -> list[int]:
    """The ranks' pids (torchrun's children), by rank (LOCAL_RANK in their environment)."""
    by_rank = {}
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in out:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(int(e.split(b"=")[1]) for e in env if e.startswith(b"RANK="))
        by_rank[rank] = int(pid)
    return [by_rank[r] for r in sorted(by_rank)]


def _start_and_wait_for_training(cmd: list[str], run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count("\n") >= 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    return proc


def test_data_and_saes_and_latents_each_train_loadable_saes(tmp_path):
    data = _run(_torchrun(tmp_path / "data", "distributed=data"))
    assert data.returncode == 0, data.stdout + data.stderr
    metrics = _finished(tmp_path / "data")
    assert metrics["train_tokens"] == 8192  # the global count: 2 ranks x 4096 rows
    assert saes.load(tmp_path / "data").d_sae == 1152
    assert data.stdout.count("SAE saved to") == 1  # rank 0 alone reports

    split = _run(_torchrun(tmp_path / "saes", "distributed=saes", "layer=1-3"))
    assert split.returncode == 0, split.stdout + split.stderr
    for layer in (1, 2, 3):  # 3 SAEs over 2 ranks: no divisibility needed
        _finished(tmp_path / "saes" / f"L{layer}")
        cfg = json.loads((tmp_path / "saes" / f"L{layer}" / "sae" / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
    assert split.stdout.index("L1") < split.stdout.index("L2") < split.stdout.index("L3")  # one summary, plan order

    wide = _run(_torchrun(tmp_path / "latents", "distributed=latents", "sae=batchtopk"))
    assert wide.returncode == 0, wide.stdout + wide.stderr
    _finished(tmp_path / "latents")
    whole = saes.load(tmp_path / "latents")  # one ordinary SAE, gathered from both shards
    assert whole.d_sae == 1152 and whole.architecture == "jumprelu"  # BatchTopK saves as JumpReLU
    assert torch.isfinite(whole.W_dec_FO).all() and (whole.W_dec_FO.norm(dim=1) > 0).all()


@pytest.mark.parametrize("strategy", ["data", "latents"])
def test_a_stop_signal_on_one_rank_checkpoints_all_and_the_run_resumes_on_as_many_ranks(tmp_path, strategy):
    run_dir = tmp_path / "run"
    cmd = _torchrun(run_dir, f"distributed={strategy}", base=LONGER)
    proc = _start_and_wait_for_training(cmd, run_dir)
    os.kill(_workers(proc)[1], signal.SIGTERM)  # rank 1 only (SLURM preemption reaches any rank)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "preempted: saving a resumable checkpoint" in out
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=False)
    stopped_at = state["members"]["."]["tokens"]
    assert state["world"] == 2 and len(state["ranks"]) == 1 and 0 < stopped_at < 60_000
    if strategy == "latents":  # each rank saved its own shard
        shard_rows = [state["members"]["."]["sae"]["shard.W_dec_FO"], state["ranks"][0]["members"]["."]["sae"]["shard.W_dec_FO"]]
        assert [t.shape[0] for t in shard_rows] == [576, 576] and not torch.equal(*shard_rows)

    alone = _run([sys.executable, "-m", "saes.train", f"hydra.run.dir={run_dir}", *LONGER, f"distributed={strategy}"])
    assert alone.returncode == 2, alone.stdout + alone.stderr
    assert "written by 2 rank(s)" in alone.stderr and "Traceback" not in alone.stderr

    resumed = _run(cmd)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {run_dir} at {stopped_at:,} tokens" in resumed.stdout
    assert _finished(run_dir)["train_tokens"] >= 60_000 - 512
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the resumed log continues where it stopped
    if strategy == "data":  # exact resume: the SAE of the same command never stopped
        straight = _run(_torchrun(tmp_path / "straight", "distributed=data", base=LONGER))
        assert straight.returncode == 0, straight.stdout + straight.stderr
        got, want = saes.load(run_dir), saes.load(tmp_path / "straight")
        for name in ("W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_a_killed_rank_fails_the_job_in_bounded_time_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for_training(_torchrun(run_dir, "distributed=data", "training.checkpoint_every=4096",
                                                  "distributed.timeout_s=30", base=LONGER), run_dir)
    while not (run_dir / "checkpoint" / "state.pt").exists():
        time.sleep(0.2)
    killed_at = time.time()
    os.kill(_workers(proc)[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed_at < 60  # bounded: torchrun notices the death and stops the other rank
    assert "rank      : 1" in out and "Signal 9 (SIGKILL)" in out
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=False)  # the last checkpoint stays loadable
    assert state["world"] == 2 and state["members"]["."]["tokens"] > 0


def test_a_hung_rank_fails_the_job_after_the_collective_timeout(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for_training(_torchrun(run_dir, "distributed=data", "distributed.timeout_s=10", base=LONGER), run_dir)
    hung = _workers(proc)[1]
    os.kill(hung, signal.SIGSTOP)  # alive but stuck: no collective of rank 1 completes
    try:
        out, _ = proc.communicate(timeout=150)  # 10 s collective timeout + torchrun's 30 s grace to stop rank 1
    finally:
        os.kill(hung, signal.SIGCONT) if Path(f"/proc/{hung}").exists() else None
    assert proc.returncode != 0
    assert "saes.train: error: rank 0 of 2: a collective failed" in out and "Timed out" in out
    assert "re-run the same command to resume" in out and not re.search(r'File ".*/saes/', out)


@pytest.mark.parametrize("overrides, message", [
    (["distributed=none"], "launched on 2 ranks but distributed=none"),
    (["distributed=saes"], "distributed=saes splits the run's 1 SAE(s) over 2 ranks"),
    (["distributed=latents", "sae=relu"], "distributed=latents supports sae=topk and sae=batchtopk"),
    (["distributed=data", "training.batch_size=255"], "training.batch_size=255 must be a multiple of the 2 ranks"),
], ids=["no-strategy", "saes-fewer-than-ranks", "latents-relu", "odd-batch"])
def test_bad_launches_fail_by_key_before_the_model_loads(tmp_path, overrides, message):
    proc = _run(_torchrun(tmp_path, *overrides), timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not re.search(r'File ".*/(saes|hydra)/', proc.stderr)  # no traceback from the ranks (torchrun's own report aside)
