"""How ``python -m saes.evaluate`` rebuilds model, data and hook from metadata and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize

from saes.evaluate.config import register_evaluate_configs
from saes.errors import ConfigError
from saes.evaluate.run import eval_setup, sae_folder, user_settings

register_evaluate_configs()

TRAINED = {  # metadata of an SAE trained by saes (the parts eval_setup reads)
    "model_name": "embedded:smollm2-135m-instruct",
    "hook_name": "blocks.3.hook_resid_post",
    "context_size": 128,
    "config": {
        "layer": 3,
        "model": {"name": "smollm2-135m", "source": "embedded:smollm2-135m-instruct", "bos_token": "<|endoftext|>",
                  "dtype": "float32"},
        "data": {"source": "pydocs", "context_size": 128, "holdout_tokens": 20000, "exclude_special": True},
        "site": {"hook_in": "blocks.3.hook_resid_post", "hook_out": "blocks.3.hook_resid_post"},
    },
}
SAELENS = {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "context_size": 1024, "prepend_bos": True}


def _setup(metadata, *overrides, folder=Path("sae")):
    with initialize(version_base="1.3", config_path=None):
        cfg = compose("evaluate", overrides=["sae=x", *overrides], return_hydra_config=True)
    user = user_settings(cfg, list(cfg.hydra.overrides.task), dict(cfg.hydra.runtime.choices))
    return eval_setup(folder, metadata, user, cfg.layer)


def test_a_saes_checkpoint_needs_no_overrides():
    s = _setup(TRAINED)
    assert s.model["source"] == "embedded:smollm2-135m-instruct" and s.model["bos_token"] == "<|endoftext|>"
    assert s.data.holdout_tokens == 20000 and s.data.source == "pydocs"
    assert (s.hook_in, s.hook_out) == ("blocks.3.hook_resid_post",) * 2 and s.trained_by_saes


def test_a_key_changes_that_key_and_a_group_replaces_the_group():
    s = _setup(TRAINED, "data.holdout_tokens=4096")
    assert s.data.holdout_tokens == 4096 and s.data.source == "pydocs"
    s = _setup(TRAINED, "data=fineweb_edu")
    assert s.data.path == "HuggingFaceFW/fineweb-edu" and s.data.holdout_tokens == 50000 and s.data.context_size == 1024
    s = _setup(TRAINED, "site=mlp_out")
    assert (s.hook_in, s.hook_out) == ("blocks.3.hook_mlp_out",) * 2  # the SAE's own layer
    s = _setup(TRAINED, "site=mlp_out", "layer=5")
    assert s.hook_in == "blocks.5.hook_mlp_out"
    s = _setup(TRAINED, "site.hook_in=blocks.4.hook_resid_pre")
    assert (s.hook_in, s.hook_out) == ("blocks.4.hook_resid_pre",) * 2
    s = _setup(TRAINED, "model=gpt2")
    assert s.model["source"] == "openai-community/gpt2" and s.model["bos_token"] is None


def test_a_saelens_checkpoint_takes_model_hook_and_context_from_its_metadata():
    s = _setup(SAELENS, "data=pydocs")
    assert s.model["source"] == "openai-community/gpt2"  # model_name matched conf/model/gpt2.yaml
    assert s.hook_in == "blocks.8.hook_resid_pre" and s.data.context_size == 1024 and not s.trained_by_saes
    assert _setup(SAELENS, "data=pydocs", "data.context_size=256").data.context_size == 256


@pytest.mark.parametrize("metadata, overrides, message", [
    (SAELENS, [], "data=<option>"),
    ({}, ["data=pydocs"], "model=<option>"),
    ({"model_name": "gpt2"}, ["data=pydocs"], "site.hook_in=<hook>"),
    ({"model_name": "gpt2"}, ["data=pydocs", "site=resid_post"], "layer=<block index>"),
])
def test_what_is_missing_is_named_with_the_fix(metadata, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _setup(metadata, *overrides)


def test_a_misspelled_key_fails_by_name():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="context_sise"):
        _setup(SAELENS, "data=pydocs", "data.context_sise=5")


def test_run_folders_with_several_saes_list_them(tmp_path):
    for name in ("k8", "k16"):
        (tmp_path / name / "sae").mkdir(parents=True)
        (tmp_path / name / "sae" / "cfg.json").write_text("{}")
    with pytest.raises(ConfigError, match="2 SAEs"):
        sae_folder(tmp_path)
    assert sae_folder(tmp_path / "k8") == tmp_path / "k8" / "sae"
