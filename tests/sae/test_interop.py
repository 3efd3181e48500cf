"""Checkpoint interop with the real peer libraries (SAELens, sparsify, llamascopium), installed in
their own venv (tests/interop.py explains why): saes writes, SAELens loads; each peer writes,
saes loads; encode/decode outputs must agree."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import saes
from saes.sae import REGISTRY, build
from saes.sae.formats import save_sae

from tests.conftest import REPO
from tests.sae.interop import interop_python

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

D_IN, D_SAE, D_OUT = 16, 64, 12
K_VARIANTS = {name for name, cls in REGISTRY.items() if "k" in {f.name for f in dataclasses.fields(cls.config_class)}}
# SAELens 6 has TopK/gated SAEs but no TopK or gated transcoder with d_out != d_in
SAES_CASES = [(v, kind) for v in sorted(REGISTRY)
              for kind in ("sae", "transcoder_same_d", "transcoder")
              if not (kind == "transcoder" and v in ("topk", "gated"))]
SAELENS_CASES = ["saelens_standard", "saelens_standard_no_bdec", "saelens_topk", "saelens_topk_rescaled",
                 "saelens_jumprelu", "saelens_gated", "saelens_transcoder", "saelens_jumprelu_transcoder"]


def _random_sae(variant: str, kind: str, seed: int):
    d_out = {"sae": None, "transcoder_same_d": D_IN, "transcoder": D_OUT}[kind]
    sae = build({"architecture": variant, "d_sae": D_SAE, **({"k": 5} if variant in K_VARIANTS else {})}, D_IN, d_out)
    g = torch.Generator().manual_seed(seed)
    sae.initialize(generator=g)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "log_threshold_F":
                p.copy_((torch.rand(p.shape, generator=g) * 0.5 + 0.05).log())
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(1 + torch.rand(p.shape[0], 1, generator=g))  # uneven decoder norms
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
    return sae


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """Write saes checkpoints, run the peer script once, return (work dir, outputs, report, ours)."""
    python = interop_python()
    work = tmp_path_factory.mktemp("interop")
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    save_file({"x": x}, str(work / "x.safetensors"))
    ours, folders = {}, {}
    for i, (variant, kind) in enumerate(SAES_CASES):
        sae = _random_sae(variant, kind, seed=i)
        folder = save_sae(sae, work / "saes" / f"{variant}_{kind}", {"model_name": "tiny", "hook_name": "blocks.0.hook_resid_post"})
        inference = sae.inference_form()
        with torch.no_grad():
            ours[f"{variant}_{kind}"] = (inference.encode(x), inference(x))
        folders[f"{variant}_{kind}"] = str(folder)
    job = work / "job.json"
    job.write_text(json.dumps({"work": str(work), "load_with_saelens": folders}))
    proc = subprocess.run([str(python), str(REPO / "tests" / "sae" / "interop_peer.py"), str(job)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((work / "peer_report.json").read_text())
    return work, x, load_file(str(work / "peer_outputs.safetensors")), report, ours


def _close(got, want):
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("variant, kind", SAES_CASES)
def test_saes_checkpoints_load_in_saelens_with_identical_outputs(peer, variant, kind):
    _, _, outputs, report, ours = peer
    name = f"{variant}_{kind}"
    assert report[name] == "ok", report[name]
    acts, recon = ours[name]
    _close(outputs[f"{name}.acts"], acts)
    _close(outputs[f"{name}.recon"], recon)
    assert (acts != 0).any()


@pytest.mark.parametrize("case", SAELENS_CASES)
def test_saelens_checkpoints_load_in_saes_with_identical_outputs(peer, case):
    work, x, outputs, report, _ = peer
    assert report["saelens"] == "ok", report["saelens"]
    sae = saes.load(work / "peer" / case)
    with torch.no_grad():
        acts = sae.encode(x)
        _close(acts, outputs[f"{case}.acts"])
        _close(sae.decode(acts), outputs[f"{case}.recon"])
    assert sae.is_transcoder == case.endswith("transcoder")


@pytest.mark.parametrize("case", ["sparsify_topk", "sparsify_transcoder"])
def test_sparsify_checkpoints_load_in_saes_with_identical_outputs(peer, case):
    work, x, outputs, report, _ = peer
    assert report["sparsify"] == "ok", report["sparsify"]
    sae = saes.load(work / "peer" / case)
    with torch.no_grad():
        _close(sae.encode(x), outputs[f"{case}.acts"])
        _close(sae(x), outputs[f"{case}.recon"])
    assert sae.architecture == "topk" and sae.k == 5 and sae.is_transcoder == (case == "sparsify_transcoder")


@pytest.mark.parametrize("case", ["lmsaes_jumprelu", "lmsaes_topk", "lmsaes_relu_plain", "lmsaes_transcoder"])
def test_llamascopium_checkpoints_load_in_saes_with_identical_reconstructions(peer, case):
    work, x, outputs, report, _ = peer
    assert report["llamascopium"] == "ok", report["llamascopium"]
    sae = saes.load(work / "peer" / case)
    with torch.no_grad():
        acts = sae.encode(x)
        _close(sae.decode(acts), outputs[f"{case}.recon"])
    # saes folds the decoder norms into the latents when lm-saes selects on pre * ||W_D||
    cfg = json.loads((work / "peer" / case / "config.json").read_text())
    norms = load_file(str(work / "peer" / case / "sae_weights.safetensors"))["W_D"].norm(dim=1)
    theirs = outputs[f"{case}.acts"] * (norms if cfg["sparsity_include_decoder_norm"] else 1)
    _close(acts, theirs)
    assert (acts != 0).sum() > 0 and sae.is_transcoder == (case == "lmsaes_transcoder")
