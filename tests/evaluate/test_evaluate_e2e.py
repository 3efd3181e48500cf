"""End to end: periodic evaluation in ``saes.train``, ``python -m saes.evaluate`` on saes and
SAELens checkpoints, ``python -m saes.compare`` on a folder of runs. One tiny training run with
three SAEs (k = 8, 16, 32, sharing its forwards) serves the whole module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

DATA = ["data.holdout_tokens=1024"]
TRAIN = ["tokens=8192", "sae.k=[8,16,32]", "sae.expansion_factor=2", "training.batch_size=256",
         "activations.buffer_tokens=2048", "activations.batch_contexts=8", "training.eval_tokens=1024",
         "training.ce_tokens=256", "training.eval_every=4096", "training.periodic_ce_tokens=128", *DATA]
EVAL = ["eval_tokens=1024", "ce_tokens=256"]
ALL_METRICS = ["explained_variance", "mse", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced",
               "ce_zero", "ce_recovered", "delta_lm_loss", "kl"]


def _run(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    _run("saes.train", f"hydra.run.dir={run_dir}", *TRAIN)
    return run_dir


@pytest.fixture(scope="module")
def evaluated(sweep, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m saes.evaluate`` on the k = 16 SAE: its output and evaluation.json."""
    out = tmp_path_factory.mktemp("evaluate")
    proc = _run("saes.evaluate", f"sae={sweep / 'k16'}", *EVAL, f"hydra.run.dir={out}")
    return proc, json.loads((out / "evaluation.json").read_text())


def test_training_logs_periodic_and_final_evaluations_with_lm_metrics(sweep):
    for k in (8, 16, 32):
        records = [json.loads(line) for line in (sweep / f"k{k}" / "metrics.jsonl").open()]
        evals = [r for r in records if "eval/explained_variance" in r]
        assert len(evals) == 2  # at 4,096 tokens and at the end (8,192)
        assert evals[0]["step"] < evals[1]["step"]
        for r in evals:
            assert {f"eval/{m}" for m in ALL_METRICS} <= r.keys()
            assert r["eval/l0"] <= k and r["eval/ce_tokens"] > 0
            hist = r["eval/density_histogram"]
            assert sum(hist["counts"]) + hist["dead"] == 2 * 576
        final = json.loads((sweep / f"k{k}" / "metrics.json").read_text())
        assert final["explained_variance"] == evals[-1]["eval/explained_variance"]
        # the LM metrics of every eval/* point come from the same (periodic) contexts
        assert evals[0]["eval/ce_clean"] == evals[1]["eval/ce_clean"] and evals[0]["eval/ce_tokens"] == evals[1]["eval/ce_tokens"]
        assert final["ce_tokens"] > evals[1]["eval/ce_tokens"]  # metrics.json: the larger training.ce_tokens set
        assert final["positions"]["excluded_positions"] > 0 and "<|endoftext|>" in final["positions"]["excluded_tokens"]
        # the W&B run (offline here) received the same evaluations
        wandb_files = list((sweep / f"k{k}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert wandb_files and b"eval/delta_lm_loss" in wandb_files[0].read_bytes()
        assert b"eval/density_histogram" in wandb_files[0].read_bytes()


def test_evaluate_prints_every_metric_and_reproduces_the_training_evaluation(sweep, evaluated):
    proc, report = evaluated
    for name in ALL_METRICS:
        assert name in proc.stdout
    assert "excluded" in proc.stdout and "<|endoftext|>" in proc.stdout and "feature density" in proc.stdout
    trained = json.loads((sweep / "k16" / "metrics.json").read_text())
    # same held-out contexts (rebuilt from the SAE's metadata), same SAE: the same numbers
    for name in ALL_METRICS:
        assert report[name] == pytest.approx(trained[name], rel=1e-5, abs=1e-6), name
    assert report["setup"]["hook_in"] == "blocks.3.hook_resid_post"
    assert report["positions"]["excluded_positions"] == trained["positions"]["excluded_positions"]


def test_saelens_checkpoint_evaluates_like_the_same_weights_trained_in_saes(sweep, evaluated, tmp_path):
    foreign = tmp_path / "saelens_sae"
    shutil.copytree(sweep / "k16" / "sae", foreign)
    cfg = json.loads((foreign / "cfg.json").read_text())
    for key in ("saes", "config"):  # what SAELens writes: no saes section, no training config
        del cfg["metadata"][key]
    (foreign / "cfg.json").write_text(json.dumps(cfg))

    proc = _run("saes.evaluate", f"sae={foreign}", *EVAL, f"hydra.run.dir={tmp_path / 'e'}", check=False)
    assert proc.returncode == 2 and "data=<option>" in proc.stderr  # the data must be named

    _run("saes.evaluate", f"sae={foreign}", "data=pydocs", *DATA, *EVAL, f"hydra.run.dir={tmp_path / 'foreign'}")
    ours = evaluated[1]
    theirs = json.loads((tmp_path / "foreign" / "evaluation.json").read_text())
    assert theirs["setup"]["metadata_source"] != ours["setup"]["metadata_source"]
    for name in ALL_METRICS:
        assert theirs[name] == ours[name], name
    assert theirs["density_histogram"] == ours["density_histogram"]


def test_compare_tables_and_plots_the_runs_of_a_folder(sweep, tmp_path):
    proc = _run("saes.compare", str(sweep), "--out", str(tmp_path))
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[:3] == ["run", "variant", "k"] and "delta_lm_loss" in header and "explained_variance" in header
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == ["k8", "k16", "k32"] and [r[2] for r in rows] == ["8", "16", "32"]
    assert "expansion_factor" not in header  # only the keys that differ
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "compare.png")
    assert image.shape[0] > 400 and image.shape[1] > 1000
    html = (tmp_path / "compare.html").read_text()
    assert "plotly" in html and "k=32" in html and "delta LM loss" in html


def test_compare_without_runs_fails_clearly(tmp_path):
    proc = _run("saes.compare", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no runs under" in proc.stderr
