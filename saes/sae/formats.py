"""Checkpoints in SAELens v6 format: ``cfg.json`` + ``sae_weights.safetensors``
(+ ``sparsity.safetensors`` with key ``sparsity`` = log10 firing density per latent), and loading
of foreign folders (SAELens, sparsify, lm-saes/llamascopium; see ``saes.sae.foreign``).

Tensor names and layouts are SAELens's: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``,
``b_enc``, ``b_dec`` (+ ``threshold`` for JumpReLU; ``b_gate``, ``r_mag``, ``b_mag`` instead of
``b_enc`` for gated). Variants are saved in their inference form (BatchTopK and Matryoshka as
JumpReLU). Transcoders set ``apply_b_dec_to_input: false``; with d_out != d_in they use SAELens's
``transcoder`` / ``jumprelu_transcoder`` (SAELens 6 has no TopK or gated transcoder class: those
are written as ``topk_transcoder`` / ``gated_transcoder`` and load in saes only). Our own config
goes under ``metadata.saes`` so a checkpoint round-trips exactly; ``metadata.sae_lens_version``
marks the format version SAELens reads. Folders are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import saes
from saes.atomic import atomic_directory, readable_directory
from saes.sae.base import SAE
from saes.sae import foreign
from saes.sae.io import CheckpointError, assign_tensors, read_json, read_tensors
from saes.sae.registry import REGISTRY, build

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
TRANSCODER_ARCHITECTURES = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}


def saelens_cfg(sae: SAE, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``cfg.json`` dict for an inference-form ``sae`` (activation normalization folded in)."""
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_dec_FO.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.saelens_cfg(),
    }
    if sae.is_transcoder and sae.d_out != sae.d_in:
        cfg["d_out"] = sae.d_out
        cfg["architecture"] = TRANSCODER_ARCHITECTURES.get(cfg["architecture"], f"{cfg['architecture']}_transcoder")
    ours = {"sae": sae.config_dict(), "d_out": sae.d_out if sae.is_transcoder else None, "version": saes.__version__}
    cfg["metadata"] = {"sae_lens_version": SAELENS_FORMAT_VERSION, **metadata, "saes": ours}
    return cfg


def save_sae(sae: SAE, folder: str | Path, metadata: dict[str, Any], log10_density_F: torch.Tensor | None = None) -> Path:
    """Write ``sae`` (in its inference form) to ``folder`` atomically; returns the folder."""
    sae = sae.inference_form()
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        tensors = {name: t.detach().cpu().contiguous() for name, t in sae.saelens_tensors().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        if log10_density_F is not None:
            save_file({"sparsity": log10_density_F.detach().cpu().float().contiguous()}, str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(saelens_cfg(sae, metadata), indent=2))
    return folder


def read_cfg(folder: str | Path) -> dict[str, Any]:
    """The parsed ``cfg.json`` of a checkpoint folder."""
    path = Path(folder) / CFG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: not a SAELens-format SAE folder")
    return read_json(path)


def saes_options(cfg: dict[str, Any], path: Path) -> tuple[dict[str, Any], int | None]:
    """``(sae options, d_out or None)`` for a cfg.json: ours from ``metadata.saes``, a foreign
    SAELens one through the variant that can represent its architecture."""
    ours = (cfg.get("metadata") or {}).get("saes")
    if ours is not None:
        d_out = ours.get("d_out")
        # files written before transcoders were distinguished stored d_out == d_in for SAEs
        return ours["sae"], None if d_out is None or (d_out == cfg["d_in"] and cfg.get("apply_b_dec_to_input", True)) else d_out
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise CheckpointError(
            f"{path}: normalize_activations={cfg['normalize_activations']!r} needs a scale the file does not hold; "
            "fold it into the weights with SAELens (sae.fold_activation_norm_scaling_factor) and save again"
        )
    architecture = cfg.get("architecture", "standard")
    for cls in REGISTRY.values():
        options = cls.options_from_saelens({**cfg, "architecture": architecture})
        if options is not None:
            return options, cfg.get("d_out", cfg["d_in"]) if "transcoder" in architecture else None
    raise CheckpointError(f"{path}: SAELens architecture {architecture!r} is not supported; supported: "
                          "standard, topk, jumprelu, gated, transcoder, jumprelu_transcoder")


def load_saelens(folder: Path) -> SAE:
    """Load a SAELens-format folder (written by saes or by SAELens)."""
    cfg = read_cfg(folder)
    options, d_out = saes_options(cfg, folder / CFG_FILE)
    tensors = read_tensors(folder / WEIGHTS_FILE)
    sae = build(options, d_in=cfg["d_in"], d_out=d_out)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", not sae.is_transcoder))
    return assign_tensors(sae, tensors, folder / WEIGHTS_FILE)


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load a checkpoint folder: SAELens format (saes, SAELens), sparsify (``cfg.json`` +
    ``sae.safetensors``) or lm-saes/llamascopium (``config.json`` with ``sae_type``). A folder
    caught mid-replacement is read from its complete stand-in (:mod:`saes.atomic`)."""
    folder = readable_directory(folder) or Path(folder)
    if (folder / CFG_FILE).exists() and (folder / foreign.SPARSIFY_WEIGHTS).exists() and not (folder / WEIGHTS_FILE).exists():
        sae = foreign.load_sparsify(folder)
    elif (folder / CFG_FILE).exists():
        sae = load_saelens(folder)
    elif (folder / foreign.LLAMASCOPIUM_CONFIG).exists():
        sae = foreign.load_llamascopium(folder)
    else:
        raise CheckpointError(
            f"{folder} holds no {CFG_FILE} (SAELens, sparsify) or {foreign.LLAMASCOPIUM_CONFIG} (lm-saes/llamascopium): "
            "not an SAE checkpoint folder"
        )
    return sae.to(device)


def load_metadata(folder: str | Path) -> dict[str, Any]:
    """``metadata`` of a checkpoint (model, hook, context size, dataset, ...)."""
    return read_cfg(folder).get("metadata", {})
