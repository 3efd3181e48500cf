"""``conf/analyze.yaml`` + ``conf/analysis/``: every key typed, documented, read and validated; the
SAE's metadata gives model, hook and data unless overridden."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from saes.analysis.config import AnalysisConfig, AnalyzeConfig, register_analyze_configs, validate_analysis
from saes.analysis.target import derive_dictionary_id, resolve_target
from saes.errors import ConfigError
from saes.resolve import sae_argv

from ..conftest import REPO

register_analyze_configs()


def _compose(*overrides: str):
    """The config of ``python -m saes.analyze <overrides>`` and Hydra's group choices."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=sae_argv(list(overrides)), return_hydra_config=True)
    return cfg, dict(cfg.hydra.runtime.choices)


def _documented_fields(cls: type) -> set[str]:
    """Fields of a dataclass followed by a docstring in its source."""
    source = Path(__file__).parents[2] / "saes" / "analysis" / "config.py"
    tree = ast.parse(source.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    documented = set()
    for stmt, after in zip(node.body, node.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            documented.add(stmt.target.id)
    return documented


def test_every_analysis_key_is_in_the_yaml_with_its_default_and_documented():
    defaults = yaml.safe_load((REPO / "conf" / "analysis" / "default.yaml").read_text())
    fields = {f.name: f.default for f in dataclasses.fields(AnalysisConfig)}
    assert defaults == fields
    assert _documented_fields(AnalysisConfig) == set(fields)
    top = {f.name for f in dataclasses.fields(AnalyzeConfig)} - {"analysis"}
    assert _documented_fields(AnalyzeConfig) == top


def test_every_analysis_key_is_read_by_the_analysis():
    code = "\n".join(p.read_text() for p in (REPO / "saes" / "analysis").glob("*.py") if p.name != "config.py")
    for f in dataclasses.fields(AnalysisConfig):
        assert re.search(rf"\.{f.name}\b", code), f"analysis.{f.name} is never read"


@pytest.mark.parametrize(
    "key, value, message",
    [("tokens", 0, "analysis.tokens=0 must be at least 1"), ("top_n", 0, "analysis.top_n"),
     ("window_before", -1, "analysis.window_before=-1 must be >= 0"), ("bands", 0, "analysis.bands"),
     ("random_samples", 200, "analysis.random_samples=200 exceeds analysis.reservoir=100"),
     ("samples_per_band", 101, "analysis.samples_per_band=101 exceeds"),
     ("hist_min", 0.0, "0 < hist_min < hist_max"), ("hist_max", 1e-5, "0 < hist_min < hist_max"),
     ("hist_bins_per_decade", 0, "analysis.hist_bins_per_decade"), ("neighbours", -2, "analysis.neighbours")],
)  # fmt: skip
def test_bad_analysis_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_analysis(dataclasses.replace(AnalysisConfig(), **{key: value}))


def test_sae_argument_and_overrides_compose():
    cfg, choices = _compose("sae=x", "analysis.top_n=3", "model.source=/m", "device=cpu")
    assert cfg.sae_path == "x" and cfg.analysis.top_n == 3 and cfg.model.source == "/m" and cfg.model.device == "cpu"
    assert cfg.data.source is None and cfg.layer is None
    assert choices["data"] is None and choices["analysis"] == "default"
    with pytest.raises(ConfigCompositionException, match="top_nn"):
        _compose("sae=x", "analysis.top_nn=3")
    with pytest.raises(ConfigCompositionException, match="analysis.tokens"):
        _compose("sae=x", "analysis.tokens=many")
    with pytest.raises(ConfigCompositionException, match="context_sise"):
        _compose("sae=x", "data.context_sise=5")


def test_model_hook_and_data_come_from_the_sae_metadata(make_sae):
    run = make_sae(16, 2, name="meta")
    target = resolve_target(*_compose(f"sae={run}", "device=cpu"))
    assert target.sae_dir == run / "sae" and target.run_dir == run
    assert target.model.source == "embedded:smollm2-135m-instruct" and target.model.bos_token == "<|endoftext|>"
    assert (target.model.device, target.model.dtype) == ("cpu", "float32")  # the command's, not the training run's
    assert target.hook_in == target.hook_out == "blocks.3.hook_resid_post"
    assert target.data.source == "pydocs" and target.data.context_size == 128 and target.data.exclude_special
    assert target.dictionary_id == derive_dictionary_id(run / "sae") and target.metadata["status"] == "finished"

    target = resolve_target(*_compose(f"sae={run}/sae", "data.context_size=64", "site=mlp_out", "dtype=bfloat16"))
    assert target.data.context_size == 64 and target.data.source == "pydocs"  # one key overridden
    assert target.hook_in == "blocks.3.hook_mlp_out" and target.model.dtype == "bfloat16"
    target = resolve_target(*_compose(f"sae={run}", "data=files", "data.path=/c/*.txt", "site.hook_in=blocks.5.hook_resid_pre"))
    assert (target.data.source, target.data.path, target.data.holdout_tokens) == ("files", "/c/*.txt", 50000)  # whole group
    assert target.hook_in == target.hook_out == "blocks.5.hook_resid_pre"
    target = resolve_target(*_compose(f"sae={run}", "site=mlp_out", "layer=7", "dictionary_id=mine"))
    assert target.hook_in == "blocks.7.hook_mlp_out" and target.dictionary_id == "mine"


def test_a_foreign_sae_without_dataset_metadata_asks_for_data(make_sae):
    run = make_sae(16, 2, name="foreign")
    cfg_file = run / "sae" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["metadata"] = {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "context_size": 1024}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"data=<pydocs"):
        resolve_target(*_compose(f"sae={run}"))
    target = resolve_target(*_compose(f"sae={run}", "data=pydocs"))
    assert target.model.source == "openai-community/gpt2"  # model_name matched conf/model/gpt2.yaml
    assert target.data.source == "pydocs" and target.data.context_size == 1024  # the context it was trained on
    assert resolve_target(*_compose(f"sae={run}", "data=pydocs", "data.context_size=128")).data.context_size == 128


def test_unknown_sae_paths_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_target(*_compose(f"sae={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="cfg.json"):
        resolve_target(*_compose(f"sae={tmp_path}"))
    with pytest.raises(ConfigError, match="sae= is not set"):
        resolve_target(*_compose())


def test_dictionary_ids_are_stable_readable_and_distinct(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "train" / "smollm2-135m_topk" / "layer=0-3" / "L0"
    (run / "sae").mkdir(parents=True)
    first = derive_dictionary_id(run / "sae")
    assert re.fullmatch(r"smollm2-135m_topk:layer=0-3:L0-[0-9a-f]{6}", first)
    monkeypatch.chdir(tmp_path)
    assert derive_dictionary_id(Path("outputs/train/smollm2-135m_topk/layer=0-3/L0/sae")) == first  # relative path
    assert derive_dictionary_id(run) == derive_dictionary_id(run)
    other = tmp_path / "copy" / "outputs" / "train" / "smollm2-135m_topk" / "layer=0-3" / "L0" / "sae"
    other.mkdir(parents=True)
    assert derive_dictionary_id(other) != first and derive_dictionary_id(other).startswith("smollm2-135m_topk:layer=0-3:L0-")
    assert re.fullmatch(r"mysae-[0-9a-f]{6}", derive_dictionary_id(tmp_path / "mysae"))
