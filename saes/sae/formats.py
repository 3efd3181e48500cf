"""Checkpoints in SAELens v6 format: ``cfg.json`` + ``sae_weights.safetensors``
(+ ``sparsity.safetensors`` with key ``sparsity`` = log10 firing density per latent).

Tensor names and layouts are SAELens's: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc``, ``b_dec``. Our own config goes under ``metadata.saes`` so a checkpoint round-trips
exactly. Folders are written atomically (a temporary sibling renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saes.errors import ConfigError
from saes.sae.base import SAE
from saes.sae.registry import REGISTRY, build

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
PARAM_NAMES = {"W_enc": "W_enc_DF", "b_enc": "b_enc_F", "W_dec": "W_dec_FD", "b_dec": "b_dec_D"}


class CheckpointError(ConfigError):
    """A checkpoint folder is missing, corrupt or of an unknown kind; the message names the file."""


def saelens_cfg(sae: SAE, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``cfg.json`` dict for ``sae`` (activation normalization already folded in)."""
    return {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_dec_FD.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.d_out == sae.d_in,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.saelens_cfg(),
        "metadata": {**metadata, "saes": {"sae": sae.config_dict(), "d_out": sae.d_out}},
    }


def save_sae(sae: SAE, folder: str | Path, metadata: dict[str, Any], log10_density_F: torch.Tensor | None = None) -> Path:
    """Write ``sae`` to ``folder`` atomically; returns the folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tensors = {name: getattr(sae, attr).detach().cpu().contiguous() for name, attr in PARAM_NAMES.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        if log10_density_F is not None:
            save_file({"sparsity": log10_density_F.detach().cpu().float().contiguous()}, str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(saelens_cfg(sae, metadata), indent=2))
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_cfg(folder: str | Path) -> dict[str, Any]:
    """The parsed ``cfg.json`` of a checkpoint folder."""
    path = Path(folder) / CFG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: not a SAELens-format SAE folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def saes_options(cfg: dict[str, Any], path: Path) -> tuple[dict[str, Any], int | None]:
    """``(sae options, d_out)`` for a cfg.json: ours from ``metadata.saes``, a foreign SAELens
    one through the variant that can represent its architecture."""
    ours = cfg.get("metadata", {}).get("saes")
    if ours is not None:
        return ours["sae"], ours.get("d_out")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise CheckpointError(
            f"{path}: normalize_activations={cfg['normalize_activations']!r} needs a scale the file does not hold; "
            "fold it into the weights with SAELens (sae.fold_activation_norm_scaling_factor) and save again"
        )
    for cls in REGISTRY.values():
        options = cls.options_from_saelens(cfg)
        if options is not None:
            return options, None
    raise CheckpointError(f"{path}: SAELens architecture {cfg.get('architecture')!r} is not supported; "
                          f"supported variants: {sorted(REGISTRY)}")


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load a SAELens-format folder (written by saes or by SAELens)."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    options, d_out = saes_options(cfg, folder / CFG_FILE)
    weights_path = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path} could not be read (missing, truncated or corrupt): {err}") from err
    sae = build(options, d_in=cfg["d_in"], d_out=d_out).to(tensors["W_dec"].dtype if "W_dec" in tensors else torch.float32)
    missing = sorted(set(PARAM_NAMES) - set(tensors))
    if missing:
        raise CheckpointError(f"{weights_path} lacks tensors {missing}")
    with torch.no_grad():
        for name, attr in PARAM_NAMES.items():
            param = getattr(sae, attr)
            if tensors[name].shape != param.shape:
                raise CheckpointError(f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, cfg.json implies {tuple(param.shape)}")
            param.copy_(tensors[name])
    return sae.to(device)


def load_metadata(folder: str | Path) -> dict[str, Any]:
    """``metadata`` of a checkpoint (model, hook, context size, dataset, ...)."""
    return read_cfg(folder).get("metadata", {})
