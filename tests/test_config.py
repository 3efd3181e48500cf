import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from saes.config import register_configs
from saes.errors import ConfigError
from saes.training.plan import plan_members

from tests.conftest import REPO

register_configs()


def _compose(overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_outer_settings_are_defaults_of_inner_ones():
    cfg = _compose(["device=cpu", "dtype=bfloat16", "layer=7"])
    assert (cfg.model.device, cfg.model.dtype) == ("cpu", "bfloat16")
    assert [m.hook_in for m in plan_members(cfg)] == ["blocks.7.hook_resid_post"]
    cfg = _compose(["device=cpu", "model.device=cuda:1"])
    assert cfg.model.device == "cuda:1"


def test_every_model_config_composes_with_its_hook_convention():
    for name, layers in [("gpt2", 12), ("pythia_160m", 12), ("gemma2_2b", 26), ("llama31_8b", 32), ("smollm2_135m", 30)]:
        cfg = _compose([f"model={name}", "site=mlp_out", "layer=2"])
        assert cfg.model.n_layers == layers
        assert [m.hook_in for m in plan_members(cfg)] == ["blocks.2.hook_mlp_out"]


def test_misspelled_key_and_unknown_group_option_fail_by_name():
    with pytest.raises(ConfigCompositionException, match="tokenz"):
        _compose(["tokenz=5"])
    with pytest.raises((ConfigKeyError, ConfigCompositionException), match="lrr"):
        _compose(["optimizer.lrr=0.1"])
    with pytest.raises(ConfigCompositionException, match="llama99"):
        _compose(["model=llama99"])
    with pytest.raises(ConfigError, match="layer='three'"):
        plan_members(_compose(["layer=three"]))


def test_prefetch_tokens_become_whole_forwards_and_negative_fails_by_key():
    from saes.training.wiring import _prefetch_forwards, validate_config

    cfg = _compose(["activations.batch_contexts=32", "data.context_size=128"])  # 4,096 rows per forward
    assert _prefetch_forwards(cfg) == 65_536 // 4_096  # the default: half the 131,072-row buffer
    assert _prefetch_forwards(_compose(["activations.prefetch_tokens=4097"])) == 2
    assert _prefetch_forwards(_compose(["activations.prefetch_tokens=0"])) == 0
    with pytest.raises(ConfigError, match=r"activations.prefetch_tokens=-1 .*0: no prefetching"):
        validate_config(_compose(["activations.prefetch_tokens=-1"]))
