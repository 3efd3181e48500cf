"""End to end: ``python -m saes.train`` on the real default model, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saes
from saes.sae import REGISTRY

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

TINY = ["tokens=40000", "activations.buffer_tokens=16384", "training.ce_tokens=1024",
        "training.eval_every=20000", "training.eval_tokens=8192", "data.holdout_tokens=8192"]


def _train(run_dir: Path, *overrides: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "saes.train", f"hydra.run.dir={run_dir}", *overrides]
    # a user's terminal delivers Ctrl-C; a test runner started as a background job inherits SIGINT
    # ignored (POSIX), which would make the child ignore the test's SIGINT: restore the default
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env_without_wandb_key(), preexec_fn=_default_sigint, **popen)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env_without_wandb_key() -> dict[str, str]:
    """A user's environment with no W&B key or mode: saes must choose offline by itself."""
    return {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    proc = _train(run_dir, *TINY)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return run_dir


def test_trained_sae_beats_the_mean_baseline_on_heldout_text(trained_run, smollm_hf):
    from omegaconf import OmegaConf

    from saes.data import load_corpus
    from saes.models import load_tokenizer

    sae = saes.load(trained_run)
    cfg = OmegaConf.load(trained_run / "config.yaml")
    corpus = load_corpus(cfg.data, load_tokenizer(cfg.model.source), cfg.model.bos_token)
    tokens = corpus.heldout_contexts(4096)
    with torch.no_grad():  # activations from plain transformers, independent of our pipeline
        x = smollm_hf(tokens, output_hidden_states=True).hidden_states[cfg.layer + 1]
    x = x[~torch.isin(tokens, corpus.special_ids())]
    with torch.no_grad():
        acts = sae.encode(x)
        err = ((sae.decode(acts) - x) ** 2).sum()
    ev = 1 - err / ((x - x.mean(0)) ** 2).sum()  # the mean predictor scores exactly 0 here
    assert ev > 0.7
    assert (acts != 0).sum(1).float().mean() <= 32
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["explained_variance"] == pytest.approx(ev.item(), abs=0.03)
    assert metrics["train_tokens"] >= 40000 and metrics["status"] == "finished"
    assert metrics["ce_spliced"] > metrics["ce_clean"] and 0 < metrics["ce_recovered"] <= 1.0


def test_run_folder_has_saelens_checkpoint_logs_and_config(trained_run):
    cfg = json.loads((trained_run / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["metadata"]["context_size"] == 128 and cfg["d_in"] == 576 and cfg["d_sae"] == 4608
    assert (trained_run / "sae" / "sparsity.safetensors").exists()
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    assert any("eval/explained_variance" in r for r in records)  # periodic held-out evaluation
    assert any("train/l0" in r for r in records)
    assert list((trained_run / "wandb").glob("offline-run-*/run-*.wandb"))  # no key: W&B offline


def test_ctrl_c_saves_a_loadable_checkpoint(tmp_path):
    proc = _train(tmp_path, "tokens=10000000", "logger=none", "activations.buffer_tokens=8192",
                  "training.eval_tokens=4096", "data.holdout_tokens=4096")
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.5)
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").read_text():
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    sae = saes.load(tmp_path)
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["status"] == "interrupted" and 0 < meta["training_tokens"] < 10000000
    assert sae.encode(torch.randn(3, 576)).shape == (3, 4608)


@pytest.mark.parametrize(
    "override, message",
    [("layer=40", "smollm2-135m has 30 layers"),
     ("site.hook_in=blocks.3.hook_resid_pots", "closest valid names"),
     ("sae.architecture=relu2", f"registered: {sorted(REGISTRY)}"),
     ("sae=relu +sae.k=32", "sae.k is not an option of sae=relu"),
     ("training.autocast=fp8", "Invalid value 'fp8', expected one of [bfloat16, float16]\n    full_key: training.autocast"),
     ("sae=jumprelu sae.sparsity_loss=l2", "sae.sparsity_loss='l2' is not valid for sae=jumprelu: Invalid value 'l2', expected one of [step, quadratic, tanh]")],
)
def test_bad_cli_input_fails_with_a_clear_message(tmp_path, override, message):
    proc = _train(tmp_path, *override.split(), "logger=none")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and message in out, out


VARIANTS = sorted(set(REGISTRY) - {"topk"})  # every registered variant; topk: trained_run above
SMALL = ["tokens=12288", "training.batch_size=256", "sae.d_sae=1024", "activations.buffer_tokens=8192",
         "training.eval_tokens=4096", "data.holdout_tokens=4096", "training.ce_tokens=256", "training.norm_estimate_tokens=4096",
         "logger=none"]


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory) -> Path:
    """One Hydra multirun (one process) training every other variant on the real model."""
    sweep = tmp_path_factory.mktemp("variants")
    cmd = [sys.executable, "-m", "saes.train", "-m", f"sae={','.join(VARIANTS)}", f"hydra.sweep.dir={sweep}",
           "hydra.sweep.subdir=${sae.architecture}", *SMALL]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=_env_without_wandb_key())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def heldout_text():
    """``(tokens [N, 128], keep mask)`` of held-out documents under SMALL's data split."""
    from hydra import compose, initialize_config_dir

    from saes.config import register_configs
    from saes.data import load_corpus
    from saes.models import load_tokenizer

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data.holdout_tokens=4096"])
    corpus = load_corpus(cfg.data, load_tokenizer(cfg.model.source), cfg.model.bos_token)
    tokens = corpus.heldout_contexts(2048)
    return tokens, ~torch.isin(tokens, corpus.special_ids())


@pytest.fixture(scope="module")
def heldout_resid(smollm_hf, heldout_text) -> torch.Tensor:
    """Layer-3 residual activations of held-out text from plain transformers (independent of saes)."""
    tokens, keep = heldout_text
    with torch.no_grad():
        x = smollm_hf(tokens, output_hidden_states=True).hidden_states[4]
    return x[keep]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_from_the_cli_and_its_checkpoint_takes_raw_activations(variant_runs, heldout_resid, variant):
    run = variant_runs / variant
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train_tokens"] >= 12288
    sae = saes.load(run)
    expected_type = "jumprelu" if "batchtopk" in variant else variant  # BatchTopK variants are saved as JumpReLU
    assert sae.architecture in REGISTRY
    assert sae.architecture == expected_type and sae.d_sae == 1024 and not sae.is_transcoder
    x = heldout_resid
    with torch.no_grad():
        acts = sae.encode(x)
        ev = 1 - ((sae.decode(acts) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev > 0.3  # far from the mean predictor: the normalization scale is folded in
    assert metrics["explained_variance"] == pytest.approx(ev.item(), abs=0.05)
    assert (acts != 0).sum(1).float().mean().item() == pytest.approx(metrics["l0"], rel=0.25)
    assert metrics["ce_spliced"] > metrics["ce_clean"]


def test_transcoder_with_intermediate_checkpoints(tmp_path, smollm, heldout_text):
    proc = _train(tmp_path, "site=mlp_transcoder", "sae=topk", "training.save_every=6144", *SMALL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    checkpoints = sorted((tmp_path / "checkpoints").iterdir(), key=lambda p: int(p.name))
    assert [int(p.name) for p in checkpoints] == [6144, 12288]
    tokens, keep = heldout_text
    hooks = ["blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"]
    with torch.no_grad():
        _, cache = smollm.run_with_cache(tokens, names_filter=hooks, stop_at_layer=4)
    x, y = (cache[h][keep] for h in hooks)
    evs = {}
    for folder in [*checkpoints, tmp_path / "sae"]:
        meta = json.loads((folder / "cfg.json").read_text())
        assert meta["apply_b_dec_to_input"] is False
        assert (meta["metadata"]["hook_name"], meta["metadata"]["hook_name_out"]) == tuple(hooks)
        sae = saes.load(folder)
        assert sae.is_transcoder and not sae.apply_b_dec_to_input
        with torch.no_grad():
            evs[folder.name] = (1 - ((sae(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()).item()
    assert json.loads((checkpoints[0] / "cfg.json").read_text())["metadata"]["status"] == "intermediate"
    # every checkpoint has both normalization scales folded in (else the EV would be far below 0)
    assert min(evs.values()) > 0 and evs["sae"] == evs["12288"] > evs["6144"], evs
    final = json.loads((tmp_path / "metrics.json").read_text())
    assert final["explained_variance"] == pytest.approx(evs["sae"], abs=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA (CI has none)")
def test_device_cuda_without_cuda_fails_by_key_before_the_model_loads(tmp_path):
    proc = _train(tmp_path, "device=cuda", "logger=none")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "saes.train: error: device=cuda: this torch build has no CUDA" in out and "use device=cpu" in out
    assert "Traceback" not in out and not (tmp_path / "metrics.jsonl").exists()
