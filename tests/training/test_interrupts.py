"""Ctrl-C or a stop signal at any moment leaves a consistent between-steps checkpoint: a run
interrupted at several random moments and re-run each time ends with the very weights of a run
never interrupted (bit for bit, on CPU)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.training.test_sweeps import TINY

pytestmark = pytest.mark.slow  # real model through the CLI

ARGS = [o for o in TINY if not o.startswith("tokens=")] + ["tokens=40960", "training.eval_every=0"]


def _cmd(run_dir) -> list[str]:
    return [sys.executable, "-m", "saes.train", f"hydra.run.dir={run_dir}", *ARGS]


def _log_size(run_dir) -> int:
    log = run_dir / "metrics.jsonl"
    return log.stat().st_size if log.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_random_interrupts_then_reruns_give_the_uninterrupted_weights_bit_for_bit(tmp_path, sig):
    straight = tmp_path / "straight"
    assert subprocess.run(_cmd(straight), cwd=REPO, capture_output=True, timeout=600).returncode == 0
    run_dir, rng, stops = tmp_path / "stopped", random.Random(sig), 0
    for _ in range(3):
        logged = _log_size(run_dir)
        proc = subprocess.Popen(_cmd(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while _log_size(run_dir) == logged and proc.poll() is None and time.time() < deadline:  # this run is training
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.5))  # anywhere in a step: mid-forward, mid-backward, mid-write
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break  # it finished before the signal landed
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
        stops += 1
    assert stops >= 1, "the run was never interrupted: lengthen it"
    if not (run_dir / "metrics.json").exists() or json.loads((run_dir / "metrics.json").read_text())["status"] != "finished":
        assert subprocess.run(_cmd(run_dir), cwd=REPO, capture_output=True, timeout=600).returncode == 0
    got, want = load_file(run_dir / "sae" / "sae_weights.safetensors"), load_file(straight / "sae" / "sae_weights.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert (got[name] == want[name]).all(), f"{name} differs after {stops} interrupts"
