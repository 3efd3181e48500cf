"""Several SAEs per forward pass, checkpoints and resume: real runs of ``python -m saes.train``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saes
from saes.layers import expand_layer_args
from saes.layers import parse_layers

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

TINY = ["logger=none", "tokens=8192", "sae.expansion_factor=2", "training.batch_size=256",
        "activations.buffer_tokens=2048", "activations.batch_contexts=8", "training.ce_tokens=256",
        "training.eval_tokens=1024", "data.holdout_tokens=1024"]


def _cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "saes.train", f"hydra.run.dir={run_dir}", *TINY, *overrides]


def _run(run_dir: Path, *overrides: str) -> str:
    proc = subprocess.run(_cmd(run_dir, *overrides), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    sae = saes.load(folder)
    return {k: v.detach() for k, v in sae.state_dict().items()}


def _assert_same_sae(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = _weights(a), _weights(b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=1e-4, msg=name)


def _assert_identical_sae(a: Path, b: Path) -> None:
    """Bit for bit: every weight (CPU training resumes exactly; an off-by-one LR step would show)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = {name: (wa[name] - wb[name]).abs().max().item() for name in wa if not torch.equal(wa[name], wb[name])}
    assert not differ, f"resumed weights differ from the uninterrupted run's (max abs difference): {differ}"


@pytest.mark.parametrize("spec, layers", [(3, [3]), ("0-3", [0, 1, 2, 3]), ("0,4,8", [0, 4, 8]), ("0-2,7", [0, 1, 2, 7])])
def test_layer_specs(spec, layers):
    assert parse_layers(spec) == layers


def test_plan_crosses_layers_hooks_and_listed_sae_options():
    from hydra import compose, initialize_config_dir

    from saes.config import register_configs
    from saes.training.plan import plan_members

    register_configs()
    hooks = '["blocks.{layer}.hook_resid_post","blocks.{layer}.hook_mlp_out"]'
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"site.hook_in={hooks}", "layer=2-3", "sae.k=[16,32]"])
        single = compose("train", overrides=[])
    members = plan_members(cfg)
    assert len(members) == 8 and len({m.name for m in members}) == 8
    assert {(m.hook_in, m.sae_options["k"]) for m in members} == {
        (f"blocks.{layer}.hook_{site}", k) for layer in (2, 3) for site in ("resid_post", "mlp_out") for k in (16, 32)}
    assert [m.name for m in plan_members(single)] == ["."]  # one SAE: directly in the run folder


def test_multirun_layer_ranges_become_jobs():
    assert expand_layer_args(["layer=0-3", "-m"]) == ["-m", "layer=0,1,2,3"]
    assert expand_layer_args(["layer=0-7", "-m", "layers_per_job=4"]) == ["-m", "layer='0-3','4-7'", "layers_per_job=4"]
    assert expand_layer_args(["layer=range(0,3)"]) == ["layer='0-2'"]
    assert expand_layer_args(["layer=5", "--multirun", "tokens=9"]) == ["--multirun", "layer=5", "tokens=9"]


def test_two_layers_in_one_process_equal_two_single_runs_with_one_forward_per_batch(tmp_path):
    _run(tmp_path / "multi", "layer=1-2")
    _run(tmp_path / "one", "layer=1")
    _run(tmp_path / "two", "layer=2")
    _assert_same_sae(tmp_path / "multi" / "L1", tmp_path / "one")
    _assert_same_sae(tmp_path / "multi" / "L2", tmp_path / "two")
    multi = json.loads((tmp_path / "multi" / "L1" / "metrics.json").read_text())
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert multi["model_forwards"] == single["model_forwards"]  # both layers came from the same forwards


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    ckpt = ["training.checkpoint_every=2048", "tokens=12288"]
    _run(tmp_path / "straight", *ckpt)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, *ckpt), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "checkpoint" / "state.pt").exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    out = _run(killed, *ckpt)
    assert "resuming" in out
    _assert_identical_sae(killed, tmp_path / "straight")
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").open()]
    assert steps == sorted(set(steps))  # nothing logged twice
    done = json.loads((killed / "metrics.json").read_text())
    assert done["train_tokens"] == json.loads((tmp_path / "straight" / "metrics.json").read_text())["train_tokens"]
    assert not (killed / "checkpoint").exists()  # resume state dropped once finished
    assert "already finished" in _run(killed, *ckpt)  # a finished run is not trained again


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_stop_signals_write_a_checkpoint_before_exit(tmp_path, sig):
    proc = subprocess.Popen(_cmd(tmp_path, "tokens=10000000"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text())
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    tokens = state["members"]["."]["tokens"]
    assert 0 < tokens < 10_000_000
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["status"] == "preempted" and meta["training_tokens"] == tokens
    assert saes.load(tmp_path).d_sae == 1152
