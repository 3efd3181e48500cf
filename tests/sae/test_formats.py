"""Checkpoint formats: bad files fail with errors naming them; SAEs that do not fit a model hook
fail before any forward; hook widths agree with the real model."""

import json

import pytest
import torch
from safetensors.torch import save_file

import saes
from saes.evaluate.metrics import reconstruction_metrics
from saes.evaluate.lm import lm_metrics
from saes.sae import build
from saes.activations.hooks import hook_width
from saes.sae.compat import SAEMismatchError
from saes.sae.formats import CheckpointError, save_sae


def _sae(name="gated", d_in=16, d_out=None):
    sae = build({"architecture": name, "d_sae": 32}, d_in=d_in, d_out=d_out)
    sae.initialize(generator=torch.Generator().manual_seed(0))
    return sae


@pytest.mark.parametrize("name", ["gated", "jumprelu", "batchtopk"])
def test_corrupt_or_truncated_weights_name_the_file(tmp_path, name):
    save_sae(_sae(name), tmp_path, {})
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors.*(truncated|corrupt)"):
        saes.load(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors"):
        saes.load(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cfg\.json is not valid JSON"):
        saes.load(tmp_path)


def test_missing_tensor_and_unknown_architecture_are_named(tmp_path):
    save_sae(_sae("jumprelu"), tmp_path, {})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    save_file({"W_enc": torch.zeros(16, 32), "b_enc": torch.zeros(32), "W_dec": torch.zeros(32, 16),
               "b_dec": torch.zeros(16)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"lacks tensor 'threshold'"):
        saes.load(tmp_path)
    del cfg["metadata"]["saes"]
    cfg["architecture"] = "temporal"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'temporal' is not supported; supported: standard, topk, jumprelu"):
        saes.load(tmp_path)
    with pytest.raises(CheckpointError, match="not an SAE checkpoint folder"):
        saes.load(tmp_path / "nothing-here")


def test_truncated_sparsify_weights_and_unsupported_options_are_named(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"k": 4, "num_latents": 32, "d_in": 16, "expansion_factor": 2,
                                                   "activation": "topk", "transcode": False, "skip_connection": False}))
    save_file({"encoder.weight": torch.randn(32, 16), "encoder.bias": torch.zeros(32), "W_dec": torch.randn(32, 16),
               "b_dec": torch.zeros(16)}, str(tmp_path / "sae.safetensors"))
    assert saes.load(tmp_path).k == 4
    data = (tmp_path / "sae.safetensors").read_bytes()
    (tmp_path / "sae.safetensors").write_bytes(data[:-50])
    with pytest.raises(CheckpointError, match=r"sae\.safetensors"):
        saes.load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"k": 4, "num_latents": 32, "d_in": 16, "skip_connection": True}))
    with pytest.raises(CheckpointError, match="skip_connection"):
        saes.load(tmp_path)


def test_unsupported_llamascopium_settings_are_named(tmp_path):
    base = {"sae_type": "sae", "d_model": 16, "expansion_factor": 2, "hook_point_in": "h", "hook_point_out": "h",
            "act_fn": "relu", "norm_activation": "dataset-wise", "sparsity_include_decoder_norm": False}
    save_file({"W_E": torch.randn(16, 32), "b_E": torch.zeros(32), "W_D": torch.randn(32, 16), "b_D": torch.zeros(16)},
              str(tmp_path / "sae_weights.safetensors"))
    for change, message in [({"act_fn": "batchtopk"}, "act_fn='batchtopk'"), ({"sae_type": "crosscoder"}, "sae_type"),
                            ({"norm_activation": "token-wise"}, "norm_activation='token-wise'"),
                            ({}, r"dataset_average_activation_norm is missing for \['h'\]")]:
        (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
        with pytest.raises(CheckpointError, match=message):
            saes.load(tmp_path)


def test_hook_widths_match_the_real_model(smollm):
    hooks = [h for h in smollm.hook_dict if h.startswith("blocks.2.")] + ["hook_embed"]
    with torch.no_grad():
        _, cache = smollm.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=hooks, stop_at_layer=3)
    checked = 0
    for hook in hooks:
        width = hook_width(smollm.cfg, hook)
        if width is not None and hook in cache:
            act = cache[hook]
            assert width == act[0, 0].numel(), hook  # heads flattened
            checked += 1
    assert checked >= 15
    assert hook_width(smollm.cfg, "blocks.2.mlp.hook_post") == 1536


def test_sae_that_does_not_fit_the_hook_fails_before_any_forward(smollm, monkeypatch):
    calls = []
    monkeypatch.setattr(type(smollm), "__call__", lambda *a, **k: calls.append("forward"))
    monkeypatch.setattr(type(smollm), "run_with_hooks", lambda *a, **k: calls.append("hooks"))
    tokens = torch.ones(2, 8, dtype=torch.long)
    keep = lambda t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731
    with pytest.raises(SAEMismatchError, match=r"d_in=64 but hook 'blocks.3.hook_resid_post' .* has width 576"):
        lm_metrics(smollm, _sae("relu", d_in=64), "blocks.3.hook_resid_post",
                   "blocks.3.hook_resid_post", tokens, keep)
    with pytest.raises(SAEMismatchError, match=r"d_out=576 but hook 'blocks.3.mlp.hook_post' .* has width 1536"):
        lm_metrics(smollm, _sae("relu", d_in=576, d_out=576), "blocks.3.ln2.hook_normalized", "blocks.3.mlp.hook_post",
                   tokens, keep)
    assert calls == []
    with pytest.raises(SAEMismatchError, match="d_in=64"):
        reconstruction_metrics(_sae("relu", d_in=64), torch.zeros(4, 576), torch.zeros(4, 576))
