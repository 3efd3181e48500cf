"""``saes.resolve``: which folder ``sae=`` names, and the model, data and hooks an SAE runs on
(its metadata + the user's overrides, by one set of rules for evaluate, analyze, load and the server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from saes.analysis.config import register_analyze_configs
from saes.errors import ConfigError
from saes.evaluate.config import register_evaluate_configs
from saes.resolve import (
    GroupOverride,
    Overrides,
    conf_option,
    find_sae_dir,
    known_model,
    resolve_config,
    resolve_sae,
    sae_argv,
    user_overrides,
)

from .conftest import REPO

register_evaluate_configs()
register_analyze_configs()

TRAINED = {  # metadata of an SAE trained by saes (what saes.training.metadata writes, in short)
    "model_name": "embedded:smollm2-135m-instruct",
    "hook_name": "blocks.3.hook_resid_post",
    "hook_name_out": "blocks.3.hook_resid_post",
    "context_size": 128,
    "config": {
        "layer": 3,
        "model": {"name": "smollm2-135m", "source": "embedded:smollm2-135m-instruct", "n_layers": 30, "d_model": 576,
                  "bos_token": "<|endoftext|>", "device": "cpu", "dtype": "bfloat16"},
        "data": {"source": "pydocs", "context_size": 128, "holdout_tokens": 20000, "exclude_special": True},
        "site": {"hook_in": "blocks.3.hook_resid_post", "hook_out": "blocks.3.hook_resid_post"},
    },
}
TRANSCODER = {**TRAINED, "hook_name": "blocks.3.ln2.hook_normalized", "hook_name_out": "blocks.3.hook_mlp_out",
              "config": {**TRAINED["config"], "site": {"hook_in": "blocks.3.ln2.hook_normalized",
                                                       "hook_out": "blocks.3.hook_mlp_out"}}}  # fmt: skip
SAELENS = {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "context_size": 1024, "prepend_bos": True,
           "exclude_special_tokens": False}  # fmt: skip


def _sae(folder: Path, metadata: dict[str, Any]) -> Path:
    """A folder with only a ``cfg.json`` (all the resolver reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": 576, "d_sae": 64, "metadata": metadata}))
    return folder


def _over(layer: int | None = None, **groups: tuple[str | None, dict[str, Any]]) -> Overrides:
    """``group=(option name or None, keys)``."""
    made = {g: GroupOverride(conf_option(g, name) if name else None, keys) for g, (name, keys) in groups.items()}
    return Overrides(**made, layer=layer)


def _cli(command: str, *overrides: str):
    """The resolution of a command line of ``python -m saes.<command>`` (composed from conf/)."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(command, overrides=sae_argv(list(overrides)), return_hydra_config=True)
    return resolve_config(cfg, dict(cfg.hydra.runtime.choices))


# --- the folder ---------------------------------------------------------------------------------


def test_the_folder_is_the_sae_folder_or_a_run_folders_sae(tmp_path):
    sae = _sae(tmp_path / "run" / "sae", TRAINED)
    assert find_sae_dir(tmp_path / "run") == sae and find_sae_dir(str(sae)) == sae
    assert resolve_sae(tmp_path / "run").run_dir == tmp_path / "run"
    assert resolve_sae(_sae(tmp_path / "loose", TRAINED)).run_dir == tmp_path / "loose"  # no run folder around it


def test_a_folder_of_several_saes_lists_them(tmp_path):
    for name in ("k8", "k16"):
        _sae(tmp_path / "sweep" / name / "sae", TRAINED)
    _sae(tmp_path / "layers" / "layer=0-1" / "L0" / "sae", TRAINED)
    _sae(tmp_path / "layers" / "layer=0-1" / "L1" / "sae", TRAINED)
    with pytest.raises(ConfigError, match=r"2 SAEs; pass one of them: sae=.*k16/sae, .*k8/sae"):
        find_sae_dir(tmp_path / "sweep")
    with pytest.raises(ConfigError, match=r"2 SAEs.*L0/sae, .*L1/sae"):
        find_sae_dir(tmp_path / "layers")  # two levels down
    assert find_sae_dir(tmp_path / "sweep" / "k8") == tmp_path / "sweep" / "k8" / "sae"


def test_no_sae_there_names_sae_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"sae=.*missing: no such folder; pass a training run folder"):
        find_sae_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"neither .*cfg\.json nor .*sae/cfg\.json exists"):
        find_sae_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"sae= is not set: pass sae=<"):
        find_sae_dir(None)
    assert find_sae_dir(tmp_path / "missing", missing_ok=True) == tmp_path / "missing"  # saes.load: the loader says why


def test_sae_on_the_command_line_is_stored_as_sae_path():
    assert sae_argv(["sae=outputs/x", "analysis.tokens=5", "data=files", "sae.k=3"]) == \
        ["sae_path=outputs/x", "analysis.tokens=5", "data=files", "sae.k=3"]  # fmt: skip


# --- the rules ----------------------------------------------------------------------------------


def test_a_saes_checkpoint_needs_no_overrides(tmp_path):
    s = resolve_sae(_sae(tmp_path / "sae", TRAINED))
    assert s.model.source == "embedded:smollm2-135m-instruct" and s.model.bos_token == "<|endoftext|>"
    assert s.model.dtype == "bfloat16" and "device" not in s.model  # the training dtype; the device is the command's
    assert s.data.holdout_tokens == 20000 and s.data.source == "pydocs" and s.data.shuffle_seed == 0  # validated, completed
    assert (s.hook_in, s.hook_out, s.layer) == ("blocks.3.hook_resid_post", "blocks.3.hook_resid_post", 3)
    assert s.trained_by_saes and s.metadata["context_size"] == 128


def test_a_key_changes_that_key_and_a_group_replaces_the_group(tmp_path):
    folder = _sae(tmp_path / "sae", TRAINED)
    s = resolve_sae(folder, _over(data=(None, {"holdout_tokens": 4096})))
    assert s.data.holdout_tokens == 4096 and s.data.source == "pydocs"
    s = resolve_sae(folder, _over(data=("fineweb_edu", {})))
    assert s.data.path == "HuggingFaceFW/fineweb-edu" and s.data.holdout_tokens == 50000 and s.data.context_size == 1024
    s = resolve_sae(folder, _over(data=("files", {"path": "/c/*.txt"})))
    assert (s.data.source, s.data.path, s.data.holdout_tokens) == ("files", "/c/*.txt", 50000)
    s = resolve_sae(folder, _over(model=("gpt2", {})))
    assert s.model.source == "openai-community/gpt2" and s.model.bos_token is None and s.model.get("dtype") is None
    s = resolve_sae(folder, _over(model=(None, {"source": "/m"})))
    assert s.model.source == "/m" and s.model.bos_token == "<|endoftext|>"


def test_site_groups_layers_and_hook_out(tmp_path):
    folder = _sae(tmp_path / "sae", TRAINED)
    s = resolve_sae(folder, _over(site=("mlp_out", {})))
    assert (s.hook_in, s.hook_out) == ("blocks.3.hook_mlp_out",) * 2  # the SAE's own layer
    s = resolve_sae(folder, _over(layer=5, site=("mlp_out", {})))
    assert (s.hook_in, s.layer) == ("blocks.5.hook_mlp_out", 5)
    s = resolve_sae(folder, _over(site=(None, {"hook_in": "blocks.4.hook_resid_pre"})))
    assert (s.hook_in, s.hook_out) == ("blocks.4.hook_resid_pre",) * 2
    s = resolve_sae(folder, _over(site=("mlp_transcoder", {})))
    assert (s.hook_in, s.hook_out) == ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")

    transcoder = _sae(tmp_path / "tc", TRANSCODER)
    assert resolve_sae(transcoder).hook_out == "blocks.3.hook_mlp_out"  # kept without overrides
    s = resolve_sae(transcoder, _over(site=(None, {"hook_in": "blocks.3.hook_resid_mid"})))
    assert s.hook_out == "blocks.3.hook_resid_mid"  # a new input hook without hook_out: that same hook
    s = resolve_sae(transcoder, _over(site=(None, {"hook_in": "blocks.{layer}.hook_resid_mid",
                                                   "hook_out": "blocks.{layer}.hook_resid_post"}), layer=2))  # fmt: skip
    assert (s.hook_in, s.hook_out) == ("blocks.2.hook_resid_mid", "blocks.2.hook_resid_post")


def test_a_foreign_checkpoint_takes_model_hook_context_and_special_tokens_from_its_metadata(tmp_path):
    folder = _sae(tmp_path / "sae", SAELENS)
    s = resolve_sae(folder, _over(data=("pydocs", {})))
    assert s.model.source == "openai-community/gpt2" and s.model.n_layers == 12  # model_name matched conf/model/gpt2.yaml
    assert (s.hook_in, s.hook_out, s.layer) == ("blocks.8.hook_resid_pre", "blocks.8.hook_resid_pre", 8)
    assert s.data.source == "pydocs" and s.data.context_size == 1024 and not s.data.exclude_special
    assert not s.trained_by_saes
    s = resolve_sae(folder, _over(data=("fineweb_edu", {"context_size": 256, "exclude_special": True})))
    assert s.data.context_size == 256 and s.data.exclude_special  # the user's keys win over the metadata
    s = resolve_sae(folder, _over(site=("resid_post", {})), need_data=False)  # the server: no dataset needed
    assert s.hook_in == "blocks.8.hook_resid_post" and s.data is None
    unknown = resolve_sae(_sae(tmp_path / "other", {**SAELENS, "model_name": "org/tiny-lm"}), _over(data=("pydocs", {})))
    assert unknown.model.source == "org/tiny-lm" and unknown.model.name == "tiny-lm"


@pytest.mark.parametrize("metadata, over, message", [
    (SAELENS, {}, r"not trained by saes .* pass data=<option>, one of data=<pydocs\|"),
    ({}, {"data": ("pydocs", {})}, r"names no model \(metadata.model_name\): pass model=<option>"),
    ({"model_name": "gpt2"}, {"data": ("pydocs", {})}, r"names no hook \(metadata.hook_name\): pass site.hook_in=<hook>"),
    ({"model_name": "gpt2"}, {"data": ("pydocs", {}), "site": ("resid_post", {})}, r"needs a layer .*pass layer=<block index>"),
    (SAELENS, {"data": ("pydocs", {}), "site": (None, {"hook_in": ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]})},
     r"site.hook_in=\[.*\]: an SAE reads one hook"),
    (SAELENS, {"data": ("hub", {"context_size": "long"})}, r"^data\.context_size: Value 'long'"),
])  # fmt: skip
def test_what_is_missing_or_wrong_is_named_with_the_fix(tmp_path, metadata, over, message):
    with pytest.raises(ConfigError, match=message):
        resolve_sae(_sae(tmp_path / "sae", metadata), _over(**over))


def test_known_models_are_matched_by_name_source_or_hub_name():
    assert known_model("gpt2")["source"] == "openai-community/gpt2"
    assert known_model("EleutherAI/pythia-160m")["name"] == "pythia-160m"
    assert known_model("smollm2-135m")["bos_token"] == "<|endoftext|>"
    assert known_model("/models/mine") == {"name": "mine", "source": "/models/mine", "bos_token": None}


# --- the same command line in both commands ---------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "analyze"])
def test_both_commands_read_sae_and_overrides_the_same_way(tmp_path, command):
    run = tmp_path / "run"
    _sae(run / "sae", TRAINED)
    s = _cli(command, f"sae={run}", "data=fineweb_edu", "data.holdout_tokens=1000", "site=mlp_out", "layer=4")
    assert s.sae_dir == run / "sae"
    assert (s.data.path, s.data.holdout_tokens, s.data.context_size) == ("HuggingFaceFW/fineweb-edu", 1000, 1024)
    assert s.hook_in == s.hook_out == "blocks.4.hook_mlp_out"
    s = _cli(command, f"sae={run}", "data.context_size=64", "model.bos_token=BOS")
    assert (s.data.context_size, s.data.source, s.model.bos_token, s.model.name) == (64, "pydocs", "BOS", "smollm2-135m")


def test_the_users_keys_are_told_from_the_chosen_groups_values(tmp_path):
    foreign = _sae(tmp_path / "foreign", SAELENS)  # trained on 1024-token contexts
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        recorded = compose("evaluate", overrides=[f"sae_path={foreign}", "data=pydocs", "data.context_size=128"],
                           return_hydra_config=True)  # fmt: skip
        bare = compose("evaluate", overrides=[f"sae_path={foreign}", "data=files", "data.path=/c/*.txt"])
    over = user_overrides(recorded)  # Hydra's record of the command line: choices and the keys it names
    assert over.data.option["source"] == "pydocs" and over.data.keys == {"context_size": 128}
    assert over.model == GroupOverride() and over.site == GroupOverride()
    assert resolve_config(recorded).data.context_size == 128  # named by the user, though pydocs.yaml says 128 too

    over = user_overrides(bare, {"data": "files"})  # no record: the keys are what files.yaml does not say
    assert over.data.option["context_size"] == 128 and "path" not in over.data.option  # files.yaml's path is ???
    assert over.data.keys == {"path": "/c/*.txt"}
    s = resolve_config(bare, {"data": "files"})
    assert s.data.path == "/c/*.txt" and s.data.context_size == 1024 and not s.data.exclude_special  # the metadata's
