"""``python -m saes.evaluate``'s command line: ``conf/evaluate.yaml`` composed with the user's
overrides, resolved by ``saes.resolve`` (whose rules tests/test_resolve.py checks one by one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from saes.errors import ConfigError
from saes.evaluate.config import register_evaluate_configs
from saes.evaluate.run import run_evaluation
from saes.resolve import resolve_config, sae_argv
from tests.test_resolve import SAELENS, TRAINED

from ..conftest import REPO

register_evaluate_configs()


def _cfg(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=sae_argv(list(overrides)), return_hydra_config=True)
    return cfg, dict(cfg.hydra.runtime.choices)


def _sae(folder: Path, metadata: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({"metadata": metadata}))
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saes.evaluate", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def test_the_sae_metadata_is_the_default_and_the_command_line_overrides_it(tmp_path):
    run = tmp_path / "run"
    _sae(run / "sae", TRAINED)
    s = resolve_config(*_cfg(f"sae={run}"))
    assert s.sae_dir == run / "sae" and s.data.holdout_tokens == 20000 and s.hook_in == "blocks.3.hook_resid_post"
    s = resolve_config(*_cfg(f"sae={run}", "model=gpt2", "data=pydocs", "data.holdout_tokens=4096", "site=attn_out", "layer=1"))
    assert s.model.source == "openai-community/gpt2" and (s.data.source, s.data.holdout_tokens) == ("pydocs", 4096)
    assert s.hook_in == s.hook_out == "blocks.1.hook_attn_out"


def test_a_saelens_checkpoint_needs_data_and_keeps_its_context(tmp_path):
    foreign = _sae(tmp_path / "saelens", SAELENS)
    with pytest.raises(ConfigError, match="data=<option>"):
        resolve_config(*_cfg(f"sae={foreign}"))
    s = resolve_config(*_cfg(f"sae={foreign}", "data=pydocs"))
    assert s.model.source == "openai-community/gpt2" and s.hook_in == "blocks.8.hook_resid_pre"
    assert s.data.context_size == 1024 and not s.trained_by_saes
    assert resolve_config(*_cfg(f"sae={foreign}", "data=pydocs", "data.context_size=256")).data.context_size == 256


def test_a_misspelled_key_fails_by_name():
    with pytest.raises(ConfigCompositionException, match="context_sise"):
        _cfg("sae=x", "data=pydocs", "data.context_sise=5")


@pytest.mark.parametrize("key", ["eval_tokens", "batch_contexts"])
def test_counts_must_be_positive_before_anything_is_read(tmp_path, key):
    cfg, choices = _cfg(f"sae={tmp_path / 'not-read'}", f"{key}=0")
    with pytest.raises(ConfigError, match=f"{key}=0 must be positive"):
        run_evaluation(cfg, tmp_path / "out", choices)
    assert not (tmp_path / "out").exists()


def test_cli_help_and_bad_input_exit_2_naming_sae(tmp_path):
    out = _cli("--help")
    assert out.returncode == 0 and "sae_path: ???" in out.stdout and "model:" in out.stdout
    out = _cli(f"hydra.run.dir={tmp_path / 'a'}")
    assert out.returncode == 2 and out.stderr.startswith("saes.evaluate: error: sae= is not set: pass sae=<")
    for name in ("k8", "k16"):
        _sae(tmp_path / "sweep" / name / "sae", TRAINED)
    out = _cli(f"sae={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert out.returncode == 2 and "is a run folder with 2 SAEs; pass one of them: sae=" in out.stderr
    assert "Traceback" not in out.stderr
