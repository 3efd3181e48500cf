"""SAETrainer on every registered variant: transcoders, training on structured data, seeds, bf16
autocast, LR schedules and ReLU resampling (optimizer state reset through the trainer)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from saes.config import TrainingConfig
from saes.sae import build
from saes.training.schedules import lr_factor
from saes.training.trainer import SAETrainer
from tests.sae.test_variants import K_VARIANTS, VARIANTS, data, float64_default, opt_cfg, train_cfg  # noqa: F401


# -- transcoders ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_transcoders_learn_a_map_between_hooks_without_centering_the_input(name):
    torch.set_default_dtype(torch.float32)
    x = data()
    mix = torch.randn(16, 12, generator=torch.Generator().manual_seed(1))
    y = torch.relu(x @ mix) * 3.0 + 5.0
    opts = {"architecture": name, "d_sae": 64, **({"k": 8} if name in K_VARIANTS else {})}
    sae = build(opts, d_in=16, d_out=12)
    assert sae.W_dec_FO.shape == (64, 12) and not sae.apply_b_dec_to_input
    trainer = SAETrainer(sae, opt_cfg(), train_cfg(), total_tokens=x.shape[0], hooks_in=("x",), hooks_out=("y",))
    trainer.initialize_from_data({"x": x[:512], "y": y[:512]}, torch.Generator().manual_seed(0))
    assert trainer.scales["y"] != trainer.scales["x"]
    fvus = [trainer.step({"x": x[i:i + 64], "y": y[i:i + 64]}).losses["fvu"] for i in range(0, x.shape[0], 64)]
    assert sum(fvus[-5:]) / 5 < 0.7 * sum(fvus[:5]) / 5
    folded = trainer.folded_copy()
    with torch.no_grad():
        ev = 1 - ((folded(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        before = folded.encode(x)
        folded.b_dec_O.add_(1.0)  # the output bias is not subtracted from the input
        assert torch.equal(folded.encode(x), before)
    assert ev > 0.3


# -- training controls ------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_on_structured_data(name):
    torch.set_default_dtype(torch.float32)
    x = data()
    opts = {"architecture": name, "d_sae": 64, **({"k": 4} if name in K_VARIANTS else {})}
    if name == "relu":  # its default L1 targets L0 ~32-60 of 4,608 latents on real activations; too strong for dense toy data
        opts["l1_coef"] = 0.3
    sae = build(opts, d_in=16)
    trainer = SAETrainer(sae, opt_cfg(warmup_fraction=0.05, schedule="cosine", final_lr_ratio=0.1), train_cfg(),
                         total_tokens=x.shape[0])
    trainer.initialize_from_data({"x": x[:512]}, torch.Generator().manual_seed(0))
    outs = [trainer.step({"x": x[i:i + 64]}) for i in range(0, x.shape[0], 64)]
    assert outs[-1].losses["fvu"] < 0.5 * outs[0].losses["fvu"]
    if sae.unit_norm_decoder:
        torch.testing.assert_close(sae.W_dec_FO.norm(dim=1), torch.ones(64))


def test_same_seed_same_weights_other_seed_other_weights():
    torch.set_default_dtype(torch.float32)
    x = data(n=64 * 5)

    def run(seed):
        torch.manual_seed(seed)
        sae = build({"architecture": "relu", "d_sae": 64}, d_in=16)
        trainer = SAETrainer(sae, opt_cfg(), train_cfg(), total_tokens=x.shape[0])
        trainer.initialize_from_data({"x": x[:256]}, torch.Generator().manual_seed(seed))
        for i in range(0, x.shape[0], 64):
            trainer.step({"x": x[i:i + 64]})
        return sae.W_enc_DF.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_bf16_autocast_keeps_float32_master_weights_and_trains():
    torch.set_default_dtype(torch.float32)
    x = data()
    results = {}
    for autocast in (None, "bfloat16"):
        torch.manual_seed(0)
        sae = build({"architecture": "topk", "d_sae": 64, "k": 4}, d_in=16)
        trainer = SAETrainer(sae, opt_cfg(), train_cfg(autocast=autocast), total_tokens=x.shape[0])
        trainer.initialize_from_data({"x": x[:512]}, torch.Generator().manual_seed(0))
        fvus = [trainer.step({"x": x[i:i + 64]}).losses["fvu"] for i in range(0, x.shape[0], 64)]
        assert all(p.dtype == torch.float32 for p in sae.parameters())
        assert all(t.dtype == torch.float32 for s in trainer.optimizer.state.values() for t in s.values() if t.ndim)
        results[autocast] = (fvus, sae.W_enc_DF.detach().clone())
    assert results["bfloat16"][0][-1] < 0.5 * results["bfloat16"][0][0]
    assert not torch.equal(results[None][1], results["bfloat16"][1])  # the bf16 matmuls did run
    with pytest.raises(ValidationError, match="expected one of \\[bfloat16, float16\\]"):  # rejected at composition
        OmegaConf.merge(OmegaConf.structured(TrainingConfig), {"autocast": "fp8"})


def test_lr_schedules_warm_up_then_decay_to_the_final_ratio():
    assert [lr_factor(s, 100, 10, "constant", 0.1) for s in (0, 4, 9, 50, 99)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    assert lr_factor(10, 100, 10, "linear", 0.2) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear", 0.2) == pytest.approx(1 - 0.8 * 45 / 90)
    assert lr_factor(100, 100, 10, "linear", 0.2) == pytest.approx(0.2)
    assert lr_factor(55, 100, 10, "cosine", 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, "cosine", 0.2) == pytest.approx(0.2)


def test_relu_resampling_reinitialises_dead_latents_from_badly_reconstructed_inputs():
    torch.set_default_dtype(torch.float32)
    x = data(n=64 * 4)
    sae = build({"architecture": "relu", "d_sae": 64, "resample_every": 128}, d_in=16)
    trainer = SAETrainer(sae, opt_cfg(), train_cfg(), total_tokens=64 * 100)
    trainer.initialize_from_data({"x": x[:256]}, torch.Generator().manual_seed(0))
    trainer.step({"x": x[:64]})  # creates Adam state
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    trainer.tokens_since_fired_F[dead] = 10**9
    trainer.tokens_since_fired_F[~dead] = 0
    before_enc, before_dec = sae.W_enc_DF.detach().clone(), sae.W_dec_FO.detach().clone()
    with torch.no_grad():  # what resampling will see: the batch after normalization
        xb = x[64:128] * trainer.scale_in
    trainer.step({"x": x[64:128]})  # tokens 64 -> 128 crosses the resample boundary
    assert not torch.allclose(sae.W_dec_FO[:10], before_dec[:10])
    # the step after resampling moved them a little; their directions are still those of inputs
    dirs = (xb - trainer.sae.b_dec_O.detach()) / (xb - trainer.sae.b_dec_O.detach()).norm(dim=1, keepdim=True)
    cos = (sae.W_dec_FO[:10] / sae.W_dec_FO[:10].norm(dim=1, keepdim=True)) @ dirs.T
    assert bool((cos.max(dim=1).values > 0.9).all())
    moved_live = (sae.W_enc_DF[:, 10:] - before_enc[:, 10:]).abs().max()
    assert moved_live < 0.1  # live latents only took an ordinary optimizer step


def test_reset_latents_zero_their_adam_moments_along_each_latent_axis_only():
    torch.set_default_dtype(torch.float32)
    x = data(n=64 * 2)
    sae = build({"architecture": "relu", "d_sae": 64}, d_in=16)
    trainer = SAETrainer(sae, opt_cfg(), train_cfg(), total_tokens=64 * 10)
    trainer.initialize_from_data({"x": x}, torch.Generator().manual_seed(0))
    trainer.step({"x": x[:64]})
    reset = torch.tensor([3, 17, 40])
    before = {name: {k: v.clone() for k, v in trainer.optimizer.state[p].items() if v.ndim} for name, p in sae.named_parameters()}
    trainer.reset_optimizer_state(reset)
    for name, axis in (("W_enc_DF", 1), ("b_enc_F", 0), ("W_dec_FO", 0)):
        for key, moment in trainer.optimizer.state[dict(sae.named_parameters())[name]].items():
            if not moment.ndim:
                continue
            assert moment.index_select(axis, reset).abs().sum() == 0, (name, key)
            keep = torch.tensor([i for i in range(64) if i not in set(reset.tolist())])
            assert torch.equal(moment.index_select(axis, keep), before[name][key].index_select(axis, keep)), (name, key)
            assert before[name][key].index_select(axis, reset).abs().sum() > 0  # there was something to reset
    assert torch.equal(trainer.optimizer.state[sae.b_dec_O]["exp_avg"], before["b_dec_O"]["exp_avg"])  # not indexed by latent
