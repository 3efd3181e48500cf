import json

import pytest
import torch

import saes
from saes.sae import build
from saes.sae.base import StepInput
from saes.sae.formats import CheckpointError, save_sae
from saes.sae.sparse_ops import encode_selected, pre_acts, sparse_decode, topk_select
from saes.training.trainer import SAETrainer



@pytest.fixture(autouse=True)
def float64_default():
    """Exactness tests compare in float64; restore the default afterwards."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _sae(d_in=16, d_sae=64, k=4, seed=0, **extra):
    sae = build({"architecture": "topk", "d_sae": d_sae, "k": k, **extra}, d_in=d_in).double()
    g = torch.Generator().manual_seed(seed)
    sae.initialize(generator=g)
    with torch.no_grad():
        sae.b_dec_O.normal_(generator=g)
        sae.b_enc_F.normal_(generator=g)
    return sae


def topk_encode(x_BD, W_enc_DF, b_enc_F, b_dec_O, k):
    """The TopK fast path's encode, composed from the library's pieces: ``(vals_BK, idx_BK)``."""
    x_c_BD, pre_BF = pre_acts(x_BD, W_enc_DF, b_enc_F, b_dec_O)
    rows_N, cols_N, vals_N = topk_select(pre_BF, k, x_BD.dtype)
    vals_N = encode_selected(x_c_BD, W_enc_DF, b_enc_F, b_dec_O, rows_N, cols_N, vals_N)
    return vals_N.view(-1, k), cols_N.view(-1, k)


def test_sparse_topk_step_matches_dense_autograd_reference():
    sae = _sae()
    x = torch.randn(32, 16, dtype=torch.float64)
    params = [sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FO, sae.b_dec_O]
    # reference: dense pre-activations, dense topk mask, dense decode
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
    vals, idx = pre.topk(4, dim=1)
    acts = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    ref = ((acts @ sae.W_dec_FO + sae.b_dec_O - x) ** 2).sum()
    ref_grads = torch.autograd.grad(ref, params)
    vals2, idx2 = topk_encode(x, sae.W_enc_DF, sae.b_enc_F, sae.b_dec_O, 4)
    ours = ((sparse_decode(idx2, vals2, sae.W_dec_FO, sae.b_dec_O) - x) ** 2).sum()
    our_grads = torch.autograd.grad(ours, params)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(our_grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_training_loss_is_fvu_plus_weighted_auxk():
    sae = _sae(aux_k=8, aux_coef=0.5)
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_forward(StepInput.single(x, dead_F=dead))
    x_hat = sae(x)
    total_var = ((x - x.mean(0)) ** 2).sum()
    fvu = ((x_hat - x) ** 2).sum() / total_var
    pre = (x - sae.b_dec_O) @ sae.W_enc_DF[:, :10] + sae.b_enc_F[:10]
    v, i = pre.topk(8, dim=1)
    e_hat = torch.zeros(32, 10).scatter(1, i, v.relu()) @ sae.W_dec_FO[:10]
    auxk = ((e_hat - (x - x_hat)) ** 2).sum() / total_var  # 10 dead >= aux_k 8: scale 1
    torch.testing.assert_close(out.loss, fvu + 0.5 * auxk)
    assert out.l0 == pytest.approx((sae.encode(x) != 0).sum().item() / 32)


def test_folding_normalization_preserves_latents_and_outputs():
    sae = _sae()
    x = torch.randn(20, 16) * 7.0
    s = 0.37
    acts_scaled = sae.encode(x * s)
    recon_scaled = sae(x * s)
    sae.fold_activation_scale(s, s)
    torch.testing.assert_close(sae.encode(x), acts_scaled)
    torch.testing.assert_close(sae(x), recon_scaled / s)


def test_decoder_rows_stay_unit_norm_and_loss_drops():
    torch.manual_seed(0)
    sae = _sae().float()
    from omegaconf import OmegaConf

    opt = OmegaConf.create({"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.0,
                            "schedule": "constant", "final_lr_ratio": 1.0, "grad_clip": 1.0})
    train = OmegaConf.create({"batch_size": 64, "dead_tokens": 10_000, "normalize_activations": True,
                              "b_dec_init": "mean"})
    trainer = SAETrainer(sae, opt, train, total_tokens=64 * 50)
    data = torch.randn(64 * 50, 16, dtype=torch.float32) @ torch.randn(16, 16, dtype=torch.float32)
    trainer.initialize_from_data({"x": data[:512]}, torch.Generator().manual_seed(0))
    first = trainer.step({"x": data[:64]}).losses["fvu"]
    for i in range(1, 50):
        last = trainer.step({"x": data[i * 64 : (i + 1) * 64]}).losses["fvu"]
    assert last < 0.5 * first
    torch.testing.assert_close(sae.W_dec_FO.norm(dim=1), torch.ones(64, dtype=torch.float32))


def test_checkpoint_round_trip_is_exact(tmp_path):
    sae = _sae().float()
    save_sae(sae, tmp_path / "sae", {"hook_name": "blocks.0.hook_resid_post"}, torch.full((64,), -2.0))
    loaded = saes.load(tmp_path)  # a run folder with sae/ inside works too
    for name in ["W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O"]:
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    x = torch.randn(8, 16, dtype=torch.float32)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["k"]) == (16, 64, "topk", 4)
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True


def test_truncated_weights_give_an_error_naming_the_file(tmp_path):
    save_sae(_sae().float(), tmp_path, {})
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors"):
        saes.load(tmp_path)


def test_registry_errors_name_the_variant_or_option():
    with pytest.raises(ValueError, match=r"registered: \[.*'topk'"):
        build({"architecture": "nope"}, d_in=8)
    with pytest.raises(ValueError, match=r"sae.l1_coef is not an option of sae=topk"):
        build({"architecture": "topk", "l1_coef": 1.0}, d_in=8)


def test_foreign_saelens_topk_folder_loads_with_the_same_outputs(tmp_path):
    sae = _sae().float()
    save_sae(sae, tmp_path, {"hook_name": "blocks.0.hook_resid_post"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["metadata"]["saes"]  # what SAELens itself writes: no saes section
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = saes.load(tmp_path)
    x = torch.randn(8, 16, dtype=torch.float32)
    assert loaded.k == 4 and torch.equal(loaded(x), sae(x))
    cfg["normalize_activations"] = "expected_average_only_in"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="normalize_activations"):
        saes.load(tmp_path)
