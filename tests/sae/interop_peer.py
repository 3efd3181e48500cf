"""Runs inside the interop venv (SAELens, sparsify, llamascopium; see tests/interop.py), never
imported by saes' own tests.

    python interop_peer.py JOB.json

The job names a work folder holding ``x.safetensors`` (inputs ``x`` [N, 16]).
1. Every folder listed under ``load_with_saelens`` (written by saes) is loaded with
   ``sae_lens.SAE.load_from_disk``; its ``encode`` and ``decode`` of the input are written.
2. SAEs are created with each peer library, given random weights, saved with the library's own
   save function under ``<work>/peer/<case>``, and their encode/decode outputs written, so saes
   can load the folders and compare.
Results go to ``<work>/peer_outputs.safetensors`` (``<case>.acts`` / ``<case>.recon``) and
``<work>/peer_report.json`` (errors per case).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D_IN, D_SAE, D_OUT = 16, 64, 12


def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "threshold" in name:  # positive thresholds (log-parameterised ones negative logs)
                values = torch.rand(p.shape, generator=generator) * 0.5 + 0.05
                p.copy_(values.log() if "log" in name else values)
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5 * (1 + torch.rand(p.shape[0], 1, generator=generator)))


def saelens_cases(out_dir: Path, x: torch.Tensor, g: torch.Generator) -> dict:
    from sae_lens import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, JumpReLUTranscoder,
                          JumpReLUTranscoderConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig,
                          Transcoder, TranscoderConfig)
    from sae_lens.saes.sae import SAEMetadata

    meta = lambda: SAEMetadata(model_name="tiny", hook_name="blocks.0.hook_resid_post")  # noqa: E731
    common = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu"}
    cases = {
        "saelens_standard": StandardSAE(StandardSAEConfig(**common, metadata=meta())),
        "saelens_standard_no_bdec": StandardSAE(StandardSAEConfig(**common, apply_b_dec_to_input=False, metadata=meta())),
        "saelens_topk": TopKSAE(TopKSAEConfig(**common, k=5, metadata=meta())),
        "saelens_topk_rescaled": TopKSAE(TopKSAEConfig(**common, k=5, rescale_acts_by_decoder_norm=True, metadata=meta())),
        "saelens_jumprelu": JumpReLUSAE(JumpReLUSAEConfig(**common, metadata=meta())),
        "saelens_gated": GatedSAE(GatedSAEConfig(**common, metadata=meta())),
        "saelens_transcoder": Transcoder(TranscoderConfig(**common, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta())),
        "saelens_jumprelu_transcoder": JumpReLUTranscoder(
            JumpReLUTranscoderConfig(**common, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta())),
    }
    outputs = {}
    for name, sae in cases.items():
        randomize(sae, g)
        sae.save_model(out_dir / name)
        with torch.no_grad():
            acts = sae.encode(x)
            outputs[f"{name}.acts"], outputs[f"{name}.recon"] = acts, sae.decode(acts)
    return outputs


def sparsify_cases(out_dir: Path, x: torch.Tensor, g: torch.Generator) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig

    outputs = {}
    for name, transcode in (("sparsify_topk", False), ("sparsify_transcoder", True)):
        coder = SparseCoder(D_IN, SparseCoderConfig(k=5, num_latents=D_SAE, transcode=transcode))
        randomize(coder, g)
        coder.save_to_disk(out_dir / name)
        with torch.no_grad():
            top_acts, top_indices, _ = coder.encode(x)
            outputs[f"{name}.acts"] = torch.zeros(x.shape[0], D_SAE).scatter_(1, top_indices, top_acts)
            outputs[f"{name}.recon"] = coder.decode(top_acts, top_indices)
    return outputs


def llamascopium_cases(out_dir: Path, x: torch.Tensor, g: torch.Generator) -> dict:
    from llamascopium.models.sae import SAEConfig, SparseAutoEncoder

    outputs = {}
    specs = {
        "lmsaes_jumprelu": dict(act_fn="jumprelu", sparsity_include_decoder_norm=True, out="h.in"),
        "lmsaes_topk": dict(act_fn="topk", top_k=5, sparsity_include_decoder_norm=True, out="h.in"),
        "lmsaes_relu_plain": dict(act_fn="relu", sparsity_include_decoder_norm=False, out="h.in"),
        "lmsaes_transcoder": dict(act_fn="jumprelu", sparsity_include_decoder_norm=True, out="h.out"),
    }
    for name, spec in specs.items():
        hook_out = spec.pop("out")
        cfg = SAEConfig(d_model=D_IN, expansion_factor=D_SAE / D_IN, hook_point_in="h.in", hook_point_out=hook_out,
                        norm_activation="dataset-wise", device="cpu", dtype=torch.float32, **spec)
        sae = SparseAutoEncoder(cfg)
        randomize(sae, g)
        sae.set_dataset_average_activation_norm({"h.in": 3.0, "h.out": 5.0})
        sae.save_pretrained(out_dir / name)
        cfg.save_hyperparameters(out_dir / name)
        sae = SparseAutoEncoder.from_pretrained(str(out_dir / name))  # through the library's own loader
        # dataset-wise normalization uses the stored norms, so the target's values do not matter
        batch, scale = sae.normalize_activations({"h.in": x, hook_out: x}, return_scale_factor=True)
        with torch.no_grad():
            acts = sae.encode(batch["h.in"])
            outputs[f"{name}.acts"] = acts
            outputs[f"{name}.recon"] = sae.decode(acts) / scale[hook_out]
    return outputs


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    work = Path(job["work"])
    data = load_file(str(work / "x.safetensors"))
    x = data["x"]
    outputs: dict[str, torch.Tensor] = {}
    report: dict[str, str] = {}

    from sae_lens import SAE

    for name, folder in job["load_with_saelens"].items():
        try:
            sae = SAE.load_from_disk(folder)
            with torch.no_grad():
                acts = sae.encode(x)
                outputs[f"{name}.acts"], outputs[f"{name}.recon"] = acts, sae.decode(acts)
            report[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the test, which decides
            report[name] = traceback.format_exc(limit=3)

    peer = work / "peer"
    peer.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for label, make in (("saelens", lambda: saelens_cases(peer, x, g)), ("sparsify", lambda: sparsify_cases(peer, x, g)),
                        ("llamascopium", lambda: llamascopium_cases(peer, x, g))):
        try:
            outputs.update(make())
            report[label] = "ok"
        except Exception:  # noqa: BLE001
            report[label] = traceback.format_exc()
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(work / "peer_outputs.safetensors"))
    (work / "peer_report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
