"""Every SAE variant: its forward and loss against plain-torch references, its gradients, folding,
checkpoint round trips, and the training controls (warmups, k annealing, resampling, autocast)."""

import dataclasses
import re

import pytest
import torch
from omegaconf import OmegaConf

import saes
from saes.errors import ConfigError
from saes.sae import REGISTRY, build
from saes.sae.base import StepInput
from saes.sae.formats import save_sae
from saes.sae.sparse_ops import batch_topk_select, encode_selected, pre_acts, ragged_decode

VARIANTS = sorted(REGISTRY)  # every registered variant: a new one is tested without editing a list
K_VARIANTS = {name for name, cls in REGISTRY.items() if "k" in {f.name for f in dataclasses.fields(cls.config_class)}}


@pytest.fixture(autouse=True)
def float64_default():
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def make(name, d_in=16, d_sae=64, d_out=None, seed=0, **options):
    """A variant with every parameter randomised (so no term is trivially zero)."""
    opts = {"architecture": name, "d_sae": d_sae, **({"k": 4} if name in K_VARIANTS else {}), **options}
    sae = build(opts, d_in=d_in, d_out=d_out).double()
    g = torch.Generator().manual_seed(seed)
    sae.initialize(generator=g)
    with torch.no_grad():
        for pname, p in sae.named_parameters():
            if pname == "log_threshold_F":
                p.copy_(torch.rand(p.shape, generator=g).log() - 1.0)  # thresholds in (0, e^-1)
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.4)
    return sae


def opt_cfg(**kw):
    return OmegaConf.create({"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.0,
                             "schedule": "constant", "final_lr_ratio": 1.0, "grad_clip": 1.0, **kw})


def train_cfg(**kw):
    return OmegaConf.create({"batch_size": 64, "dead_tokens": 10_000, "normalize_activations": True,
                             "b_dec_init": "mean", **kw})


def data(n=64 * 40, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)).to(dtype)


# -- registry and options ------------------------------------------------------------------

def test_registry_has_every_variant_and_errors_name_them():
    assert {"relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk"} <= set(REGISTRY)
    with pytest.raises(ConfigError, match=re.escape(f"registered: {sorted(REGISTRY)}")):
        build({"architecture": "sparse"}, d_in=8)
    with pytest.raises(ConfigError, match=r"sae.k is not an option of sae=relu"):
        build({"architecture": "relu", "k": 32}, d_in=8)
    with pytest.raises(ConfigError, match="sae.target_l0"):
        build({"architecture": "jumprelu", "sparsity_loss": "quadratic"}, d_in=8)
    with pytest.raises(ConfigError, match="sae.prefix_fractions"):
        build({"architecture": "matryoshka_batchtopk", "prefix_fractions": [0.5, 0.25, 1.0]}, d_in=8)
    with pytest.raises(ConfigError, match="sae.k_anneal_fraction"):
        build({"architecture": "topk", "k_start": 40}, d_in=8)


# -- forward passes and losses against references --------------------------------------------

def test_relu_loss_is_mse_plus_decoder_norm_weighted_l1():
    sae = make("relu", l1_coef=0.7, pre_act_coef=0.01)
    x = torch.randn(32, 16)
    out = sae.training_forward(StepInput.single(x, progress=1.0))
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    f = pre.clamp_min(0)
    norms = sae.W_dec_FO.norm(dim=1)
    mse = ((f @ sae.W_dec_FO + sae.b_dec_O - x) ** 2).sum(1).mean()
    ref = mse + 0.7 * (f * norms).sum(1).mean() + 0.01 * ((-pre).clamp_min(0) * norms).sum(1).mean()
    torch.testing.assert_close(out.loss, ref.float(), rtol=1e-5, atol=1e-6)
    tanh = make("relu", l1_coef=0.7, penalty="tanh", tanh_scale=2.0)
    out = tanh.training_forward(StepInput.single(x, progress=1.0))
    f = ((x - tanh.b_dec_O) @ tanh.W_enc_DF + tanh.b_enc_F).clamp_min(0)
    ref = ((f @ tanh.W_dec_FO + tanh.b_dec_O - x) ** 2).sum(1).mean() + 0.7 * torch.tanh(2.0 * f * tanh.W_dec_FO.norm(dim=1)).sum(1).mean()
    torch.testing.assert_close(out.loss, ref.float(), rtol=1e-5, atol=1e-6)


def test_sparsity_coefficient_warms_up_linearly():
    sae = make("relu", l1_coef=0.8, sparsity_warmup_fraction=0.2)
    x = torch.randn(8, 16)
    coefs = [sae.training_forward(StepInput.single(x, progress=p)).losses["sparsity_coef"] for p in (0.0, 0.05, 0.1, 0.2, 0.9)]
    assert coefs == pytest.approx([0.0, 0.2, 0.4, 0.8, 0.8])


def test_jumprelu_forward_loss_and_straight_through_threshold_gradient():
    sae = make("jumprelu", l0_coef=0.3, bandwidth=0.5)
    x = torch.randn(64, 16)
    out = sae.training_forward(StepInput.single(x, progress=1.0))
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    t = sae.log_threshold_F.exp()
    acts = pre * (pre > t)
    assert torch.equal(sae.encode(x), acts)
    x_hat = acts @ sae.W_dec_FO + sae.b_dec_O
    mse = ((x_hat - x) ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, (mse + 0.3 * (pre > t).sum(1).double().mean()).float(), rtol=1e-5, atol=1e-6)
    out.loss.backward()
    # Rajamanoharan et al.: dL/dt = sum_b [ -(t/eps) K((z-t)/eps) * dMSE/dacts + l0_coef * -(1/eps) K((z-t)/eps) / B ]
    eps = 0.5
    kernel = (((pre - t) / eps).abs() < 0.5).double()
    g_acts = 2 * (x_hat - x) @ sae.W_dec_FO.T / 64
    d_t = (-(t / eps) * kernel * g_acts).sum(0) + 0.3 * (-(1 / eps) * kernel).sum(0) / 64
    torch.testing.assert_close(sae.log_threshold_F.grad, (d_t * t).detach())  # d/d log t = t d/dt
    assert sae.log_threshold_F.grad.abs().sum() > 0


def test_jumprelu_quadratic_loss_targets_l0():
    sae = make("jumprelu", l0_coef=1.0, sparsity_loss="quadratic", target_l0=5.0)
    x = torch.randn(32, 16)
    out = sae.training_forward(StepInput.single(x, progress=1.0))
    l0 = (sae.encode(x) != 0).sum(1).double()
    assert out.losses["sparsity"] == pytest.approx((2 / 5.0 * (l0 - 5.0) ** 2).mean().item(), rel=1e-6)


def test_gated_encode_and_loss_match_the_paper():
    sae = make("gated", l1_coef=0.5)
    x = torch.randn(32, 16)
    x_c = x - sae.b_dec_O
    gate = x_c @ sae.W_enc_DF + sae.b_enc_F
    mag = x_c @ (sae.W_enc_DF * sae.r_mag_F.exp()) + sae.b_mag_F
    acts = (gate > 0) * mag.clamp_min(0)
    assert torch.allclose(sae.encode(x), acts)
    out = sae.training_forward(StepInput.single(x, progress=1.0))
    mse = ((acts @ sae.W_dec_FO + sae.b_dec_O - x) ** 2).sum(1).mean()
    l1 = (gate.clamp_min(0) * sae.W_dec_FO.norm(dim=1)).sum(1).mean()
    aux = ((gate.clamp_min(0) @ sae.W_dec_FO + sae.b_dec_O - x) ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, (mse + 0.5 * l1 + aux).float(), rtol=1e-5, atol=1e-6)
    # the auxiliary reconstruction trains the gate, not the decoder
    sae.zero_grad()
    out.loss.backward()
    W_dec = sae.W_dec_FO.detach().clone().requires_grad_(True)
    ref = ((acts.detach() @ W_dec + sae.b_dec_O.detach() - x) ** 2).sum(1).mean()
    (g,) = torch.autograd.grad(ref, W_dec)
    torch.testing.assert_close(sae.W_dec_FO.grad, g + 0.5 * (gate.clamp_min(0).detach().sum(0) / 32)[:, None]
                               * sae.W_dec_FO.detach() / sae.W_dec_FO.norm(dim=1, keepdim=True).detach(),
                               rtol=1e-5, atol=1e-6)


def batch_topk_encode(x_BD, W_enc_DF, b_enc_F, b_dec_O, n_keep):
    """BatchTopK's fast-path encode, composed from the library's pieces: ``(rows_N, cols_N, vals_N)``."""
    x_c_BD, pre_BF = pre_acts(x_BD, W_enc_DF, b_enc_F, b_dec_O)
    rows_N, cols_N, vals_N = batch_topk_select(pre_BF, n_keep, x_BD.dtype)
    return rows_N, cols_N, encode_selected(x_c_BD, W_enc_DF, b_enc_F, b_dec_O, rows_N, cols_N, vals_N)


def test_batch_topk_keeps_the_largest_k_times_batch_and_matches_dense_gradients():
    sae = make("batchtopk", k=3)
    x = torch.randn(20, 16)
    params = [sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FO, sae.b_dec_O]
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    flat = pre.clamp_min(0).flatten()
    keep = torch.zeros_like(flat).scatter(0, flat.topk(60).indices, 1.0).view_as(pre)
    acts = pre.clamp_min(0) * keep
    ref = ((acts @ sae.W_dec_FO + sae.b_dec_O - x) ** 2).sum()
    ref_grads = torch.autograd.grad(ref, params)
    rows, cols, vals = batch_topk_encode(x, sae.W_enc_DF, sae.b_enc_F, sae.b_dec_O, 60)
    assert bool((rows[1:] >= rows[:-1]).all())
    ours = ((ragged_decode(rows, cols, vals, sae.W_dec_FO, sae.b_dec_O, 20) - x) ** 2).sum()
    torch.testing.assert_close(ours, ref)
    for got, want in zip(torch.autograd.grad(ours, params), ref_grads):
        torch.testing.assert_close(got, want)


def test_batchtopk_threshold_tracks_the_smallest_selected_activation_and_drives_inference():
    sae = make("batchtopk", k=4, threshold_rate=0.5)
    sae.threshold.zero_()
    xs = [torch.randn(32, 16) for _ in range(3)]
    expected = None
    for x in xs:
        pre = ((x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F).flatten()
        smallest = pre.topk(4 * 32).values.min().item()
        expected = smallest if expected is None else 0.5 * expected + 0.5 * smallest
        out = sae.training_forward(StepInput.single(x))
        assert out.l0 == pytest.approx(4.0)
    assert float(sae.threshold) == pytest.approx(expected)
    x = torch.randn(16, 16)
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    assert torch.equal(sae.encode(x), pre * (pre > expected))  # per token, independent of the batch
    assert torch.equal(sae.encode(x[:1]), sae.encode(x)[:1])


def test_matryoshka_loss_is_the_mean_fvu_over_nested_prefixes():
    sae = make("matryoshka_batchtopk", k=6, prefix_fractions=[0.25, 0.5, 1.0], aux_coef=0.0)
    x = torch.randn(24, 16)
    out = sae.training_forward(StepInput.single(x))
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    flat = pre.clamp_min(0).flatten()
    acts = (torch.zeros_like(flat).scatter(0, flat.topk(6 * 24).indices, 1.0).view_as(pre)) * pre.clamp_min(0)
    var = ((x - x.mean(0)) ** 2).sum()
    fvus = [(((acts[:, :w] @ sae.W_dec_FO[:w] + sae.b_dec_O - x) ** 2).sum() / var) for w in (16, 32, 64)]
    torch.testing.assert_close(out.loss, torch.stack(fvus).mean().float(), rtol=1e-5, atol=1e-6)
    assert [out.losses[f"fvu_{w}"] for w in (16, 32, 64)] == pytest.approx([f.item() for f in fvus], rel=1e-5)


def test_topk_decoder_norm_selection_selects_on_scaled_preacts_and_folds_exactly():
    sae = make("topk", k=3, decoder_norm_selection=True)
    with torch.no_grad():
        sae.W_dec_FO.mul_(torch.rand(64, 1) * 3 + 0.1)
    x = torch.randn(10, 16)
    scaled = ((x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F) * sae.W_dec_FO.norm(dim=1)
    vals, idx = scaled.topk(3, dim=1)
    acts = torch.zeros_like(scaled).scatter(1, idx, vals.clamp_min(0))
    assert torch.allclose(sae.encode(x), acts)
    x_hat = (acts / sae.W_dec_FO.norm(dim=1)) @ sae.W_dec_FO + sae.b_dec_O
    torch.testing.assert_close(sae(x), x_hat)
    out = sae.training_forward(StepInput.single(x))
    assert out.losses["fvu"] == pytest.approx((((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()).item(), rel=1e-6)
    plain = sae.inference_form()
    assert plain is not sae and not plain.cfg.decoder_norm_selection and sae.cfg.decoder_norm_selection
    torch.testing.assert_close(plain.W_dec_FO.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(plain.encode(x), acts)
    torch.testing.assert_close(plain(x), x_hat)


def test_k_anneals_linearly_from_k_start():
    sae = make("topk", k=4, k_start=20, k_anneal_fraction=0.5, aux_coef=0.0)
    x = torch.randn(16, 16)
    l0s = [sae.training_forward(StepInput.single(x, progress=p)).l0 for p in (0.0, 0.25, 0.5, 0.9)]
    assert l0s == pytest.approx([20, 12, 4, 4], abs=0.5)  # relu may zero a few of the k


# -- folding and checkpoints ------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("d_out", [None, 12])
def test_folding_normalization_keeps_latents_and_rescales_outputs(name, d_out):
    sae = make(name, d_out=d_out).inference_form()
    x = torch.randn(20, 16) * 7.0
    s_in, s_out = 0.37, (0.37 if d_out is None else 2.5)
    acts, recon = sae.encode(x * s_in), sae(x * s_in)
    sae.fold_activation_scale(s_in, s_out)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), recon / s_out)


@pytest.mark.parametrize("name", [v for v in VARIANTS if v != "topk"])
def test_folding_decoder_norms_keeps_reconstructions(name):
    sae = make(name).inference_form()
    with torch.no_grad():
        sae.W_dec_FO.mul_(torch.rand(64, 1) * 3 + 0.1)
    x = torch.randn(20, 16)
    recon, active = sae(x), sae.encode(x) != 0
    norms = sae.fold_decoder_norms()
    torch.testing.assert_close(sae(x), recon)
    assert torch.equal(sae.encode(x) != 0, active)
    torch.testing.assert_close(sae.W_dec_FO.norm(dim=1), torch.ones(64))
    assert not torch.allclose(norms, torch.ones(64))


def test_plain_topk_refuses_to_fold_decoder_norms():
    with pytest.raises(ValueError, match="selection"):
        make("topk").fold_decoder_norms()  # it would change which latents win


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("d_out", [None, 16, 12])
def test_save_load_round_trip_is_exact_for_every_variant(tmp_path, name, d_out):
    torch.set_default_dtype(torch.float32)
    sae = make(name, d_out=d_out).float()
    inference = sae.inference_form()
    save_sae(sae, tmp_path / "sae", {"hook_name": "blocks.0.hook_resid_post"}, torch.full((64,), -2.0))
    loaded = saes.load(tmp_path / "sae")
    x = torch.randn(50, 16)
    assert type(loaded) is type(inference) and loaded.is_transcoder == (d_out is not None)
    assert loaded.apply_b_dec_to_input == (d_out is None)
    torch.testing.assert_close(loaded.encode(x), inference.encode(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded(x), inference(x), atol=1e-6, rtol=0)
    assert (loaded.encode(x) != 0).sum() > 0


def test_batchtopk_saves_as_jumprelu_with_its_global_threshold(tmp_path):
    torch.set_default_dtype(torch.float32)
    sae = make("batchtopk").float()
    save_sae(sae, tmp_path, {})
    loaded = saes.load(tmp_path)
    assert loaded.architecture == "jumprelu"
    torch.testing.assert_close(loaded.threshold_F, torch.full((64,), 0.4))
    x = torch.randn(30, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-6, rtol=0)
