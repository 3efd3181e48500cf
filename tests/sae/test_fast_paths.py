"""The fast TopK / BatchTopK training paths against the plain dense PyTorch reference of
benchmarks/reference_topk.py: same losses and gradients (fp32 tight, bf16 autocast loose), AuxK with
dead latents included, and one whole trainer step (projection, clipping, Adam, renormalisation)."""

import importlib.util
import sys

import pytest
import torch
from omegaconf import OmegaConf

from saes.sae import build
from saes.sae.base import StepInput
from saes.training.trainer import SAETrainer
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("reference_topk", REPO / "benchmarks" / "reference_topk.py")
ref = importlib.util.module_from_spec(_spec)
sys.modules["reference_topk"] = ref
_spec.loader.exec_module(ref)

NAMES = ("W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O")
D, F, K, AUX_K, B = 48, 384, 8, 24, 96


def make_pair(arch="topk", seed=0, k=K, aux_k=AUX_K, aux_coef=0.25):
    """Our SAE (every parameter randomised) and the dense reference holding the same weights."""
    sae = build({"architecture": arch, "d_sae": F, "k": k, "aux_k": aux_k, "aux_coef": aux_coef}, d_in=D)
    g = torch.Generator().manual_seed(seed)
    sae.initialize(generator=g)
    with torch.no_grad():
        sae.b_enc_F.copy_(0.2 * torch.randn(F, generator=g))
        sae.b_dec_O.copy_(0.3 * torch.randn(D, generator=g))
    dense = ref.DenseTopKSAE(D, F, k, aux_k, aux_coef, batch_topk=arch == "batchtopk")
    dense.load_state_dict({n: getattr(sae, n).detach().clone() for n in NAMES})
    return sae, dense


def batch(seed=1, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) @ torch.randn(D, D, generator=g) / D**0.5 + 0.5


def dead_mask(fraction, seed=2):
    dead = torch.rand(F, generator=torch.Generator().manual_seed(seed)) < fraction
    return dead if fraction > 0 else None


def grads(loss, module):
    return dict(zip(NAMES, torch.autograd.grad(loss, [getattr(module, n) for n in NAMES])))


def assert_grads_close(got, want, rel):
    for name in NAMES:
        scale = want[name].abs().max().item()
        assert scale > 0, f"reference gradient of {name} is zero: the test would prove nothing"
        torch.testing.assert_close(got[name], want[name], rtol=rel, atol=rel * scale, msg=lambda m: f"{name}: {m}")


CASES = [  # (architecture, dead fraction): no AuxK; few dead (< aux_k, scaled down); many dead
    ("topk", 0.0), ("topk", 0.04), ("topk", 0.5), ("batchtopk", 0.0), ("batchtopk", 0.5),
]


@pytest.fixture(params=["auto", "all dense", "all sparse"])
def kernels(request, monkeypatch):
    """Each product's dense and sparse kernels (picked by density), both forced everywhere too;
    row gathers in small chunks so the chunking is exercised."""
    from saes.sae import sparse_ops

    if request.param != "auto":
        monkeypatch.setattr(sparse_ops, "DENSE_FRACTION", 0.0 if request.param == "all dense" else 2.0)
    if request.param == "all sparse":  # the COO / row-gather kernels used off CPU
        monkeypatch.setattr(sparse_ops, "CPU_CSR_KERNELS", False)
    monkeypatch.setattr(sparse_ops, "GATHER_BYTES", 100 * D * 4)
    return request.param


@pytest.mark.parametrize("arch,dead_fraction", CASES)
def test_fp32_loss_and_gradients_match_dense_reference(arch, dead_fraction, kernels):
    sae, dense = make_pair(arch)
    x, dead = batch(), dead_mask(dead_fraction)
    out = sae.training_forward(StepInput.single(x, dead_F=dead))
    loss_ref, parts = dense.loss(x, dead)
    torch.testing.assert_close(out.loss, loss_ref, rtol=1e-5, atol=0)
    assert out.losses["fvu"] == pytest.approx(parts["fvu"].item(), rel=1e-5)
    if dead is not None:
        assert out.losses["auxk"] == pytest.approx(parts["auxk"].item(), rel=1e-5)
        assert parts["auxk"].item() > 0
    assert out.l0 == pytest.approx((parts["acts_BF"] > 0).sum().item() / B)
    torch.testing.assert_close(out.fired_F, (parts["acts_BF"] > 0).any(0))
    assert_grads_close(grads(out.loss, sae), grads(loss_ref, dense), rel=2e-5)


@pytest.mark.parametrize("arch,dead_fraction", [("topk", 0.0), ("topk", 0.5), ("batchtopk", 0.0), ("batchtopk", 0.5)])
def test_bf16_autocast_matches_dense_reference_loosely(arch, dead_fraction):
    sae, dense = make_pair(arch)
    x, dead = batch(), dead_mask(dead_fraction)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.training_forward(StepInput.single(x, dead_F=dead))
        loss_ref, _ = dense.loss(x, dead)
    # the same bf16 pre-activations select the same latents; sums differ by bf16 rounding only
    torch.testing.assert_close(out.loss, loss_ref.float(), rtol=2e-2, atol=0)
    assert_grads_close(grads(out.loss, sae), grads(loss_ref, dense), rel=3e-2)


def test_the_comparison_can_fail():
    """A wrong k, a missing AuxK term or a perturbed weight is caught by the same checks."""
    sae, dense = make_pair()
    x, dead = batch(), dead_mask(0.5)
    out = sae.training_forward(StepInput.single(x, dead_F=dead))
    ours = grads(out.loss, sae)
    loss_ref, _ = dense.loss(x, dead)
    assert_grads_close(ours, grads(loss_ref, dense), rel=2e-5)  # the unmodified reference agrees
    loss_ref, _ = dense.loss(x, None)  # AuxK left out
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out.loss, loss_ref, rtol=1e-5, atol=0)
    dense.k = K + 1
    loss_ref, _ = dense.loss(x, dead)
    with pytest.raises(AssertionError):
        assert_grads_close(ours, grads(loss_ref, dense), rel=2e-5)
    dense.k = K
    with torch.no_grad():
        dense.W_dec_FO[3] *= 1.001
    loss_ref, _ = dense.loss(x, dead)
    with pytest.raises(AssertionError):
        assert_grads_close(ours, grads(loss_ref, dense), rel=2e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_whole_trainer_steps_match_reference_steps(arch):
    """Three SAETrainer steps (dead latents from the start) = three reference steps: decoder-grad
    projection, clipping, Adam with the same LR, renormalised rows."""
    sae, dense = make_pair(arch)
    opt = OmegaConf.create({"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.0,
                            "schedule": "constant", "final_lr_ratio": 1.0, "grad_clip": 0.5})
    train = OmegaConf.create({"batch_size": B, "dead_tokens": 0, "normalize_activations": False, "b_dec_init": "zeros"})
    trainer = SAETrainer(sae, opt, train, total_tokens=10 * B)
    adam = torch.optim.Adam(dense.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    for step in range(3):
        x = batch(seed=10 + step)
        dead = trainer.dead_mask().clone()  # dead_tokens=0: every latent counts as dead -> AuxK on
        assert dead.all()
        out = trainer.step({"x": x})
        loss_ref = dense.step(adam, x, dead, grad_clip=0.5)
        torch.testing.assert_close(out.loss.detach(), loss_ref, rtol=1e-5, atol=0)
        for name in NAMES:
            torch.testing.assert_close(getattr(sae, name).detach(), getattr(dense, name).detach(), rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"step {step} {name}: {m}")


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clip_grad_norm_is_torchs_bit_for_bit(scale):
    """The trainer's clipping (no rescale pass when under the limit) = torch.nn.utils.clip_grad_norm_."""
    from saes.distributed.sync import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(40, 30, generator=g)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, theirs):
        p.grad = scale * torch.randn(40, 30, generator=g)
        q.grad = p.grad.clone()
    clip_grad_norm(ours, 1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    for p, q in zip(ours, theirs):
        assert torch.equal(p.grad, q.grad)
    norm = torch.stack([p.grad.norm() for p in ours]).norm().item()
    assert norm == pytest.approx(1.0, rel=1e-4) if scale > 1 else norm < 1.0  # clipped / left alone
