"""Loaders for checkpoint folders written by sparsify and by lm-saes/llamascopium.

sparsify (EleutherAI): ``<hookpoint>/cfg.json`` (k, num_latents or expansion_factor, d_in,
transcode, ...) + ``sae.safetensors`` (``encoder.weight [F, D]``, ``encoder.bias``, ``W_dec [F, D]``,
``b_dec``). Its encoder is ``topk(relu(encoder(x - b_dec)))``, a TopK SAE here (transcoders do not
subtract ``b_dec``).

lm-saes / llamascopium (OpenMOSS, Llama Scope): ``config.json`` (``sae_type: "sae"``, d_model,
expansion_factor, act_fn, top_k, norm_activation, sparsity_include_decoder_norm,
hook_point_in/out, use_decoder_bias) + ``sae_weights.safetensors`` (or ``checkpoints/final``):
``W_E [D, F]``, ``b_E``, ``W_D [F, D]``, ``b_D``, ``activation_function.log_jumprelu_threshold``,
``dataset_average_activation_norm.<hook>``. Its encoder does not subtract ``b_D``. Loading folds:
- the dataset-wise norm (``x * sqrt(D) / norm`` in, the inverse out), so the SAE takes raw
  activations and returns raw reconstructions;
- with ``sparsity_include_decoder_norm`` (selection and thresholds on ``pre * ||W_D||``), the
  decoder norms into the encoder, so decoder rows are unit norm and latent ``i`` reads
  ``pre_i * ||W_D[i]||``.
Latent values are those of training (normalized space); reconstructions equal lm-saes's
denormalized ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saes.sae.base import SAE
from saes.sae.io import CheckpointError, assign_tensors, read_json, read_tensors
from saes.sae.registry import build

SPARSIFY_WEIGHTS = "sae.safetensors"
LLAMASCOPIUM_CONFIG = "config.json"
LLAMASCOPIUM_WEIGHTS = ("sae_weights.safetensors", "checkpoints/pruned.safetensors", "checkpoints/final.safetensors")
LLAMASCOPIUM_ACT_FNS = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}


def _rename(tensors: dict[str, torch.Tensor], names: dict[str, str], path: Path) -> dict[str, torch.Tensor]:
    """``{our name: tensors[their name]}``; a missing tensor raises ``CheckpointError``."""
    missing = sorted(theirs for theirs in names.values() if theirs not in tensors)
    if missing:
        raise CheckpointError(f"{path} lacks tensors {missing}; it has {sorted(tensors)}")
    return {ours: tensors[theirs] for ours, theirs in names.items()}


def load_sparsify(folder: Path) -> SAE:
    """A sparsify hookpoint folder as a TopK SAE (or transcoder)."""
    cfg_path, weights_path = folder / "cfg.json", folder / SPARSIFY_WEIGHTS
    cfg = read_json(cfg_path)
    if cfg.get("activation", "topk") != "topk":
        raise CheckpointError(f"{cfg_path}: activation={cfg['activation']!r} is not supported; only sparsify's topk")
    if cfg.get("skip_connection"):
        raise CheckpointError(f"{cfg_path}: skip_connection=true (W_skip) is not supported by saes")
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or d_in * cfg["expansion_factor"])
    transcode = bool(cfg.get("transcode", False))
    tensors = read_tensors(weights_path)
    sae = build({"architecture": "topk", "d_sae": d_sae, "k": int(cfg["k"])}, d_in=d_in, d_out=d_in if transcode else None)
    named = _rename(tensors, {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"},
                    weights_path)
    named["W_enc"] = named["W_enc"].T
    return assign_tensors(sae, named, weights_path)


def load_llamascopium(folder: Path) -> SAE:
    """An lm-saes/llamascopium SAE folder as a ReLU, JumpReLU or TopK SAE (or transcoder)."""
    cfg_path = folder / LLAMASCOPIUM_CONFIG
    cfg = read_json(cfg_path)
    if cfg.get("sae_type") != "sae":
        raise CheckpointError(f"{cfg_path}: sae_type={cfg.get('sae_type')!r} is not supported; saes loads lm-saes "
                              "sae_type 'sae' (crosscoders, CLTs, LoRSA and MoLT have no saes equivalent)")
    act_fn = str(cfg.get("act_fn", "relu")).lower()
    if act_fn not in LLAMASCOPIUM_ACT_FNS:
        raise CheckpointError(f"{cfg_path}: act_fn={act_fn!r} is not supported (supported: {sorted(LLAMASCOPIUM_ACT_FNS)}); "
                              "convert BatchTopK SAEs to JumpReLU with lm-saes first")
    if cfg.get("use_glu_encoder"):
        raise CheckpointError(f"{cfg_path}: use_glu_encoder=true is not supported by saes")
    norm_mode = cfg.get("norm_activation", "dataset-wise")
    if norm_mode not in ("dataset-wise", "inference"):
        raise CheckpointError(f"{cfg_path}: norm_activation={norm_mode!r} depends on each input; only dataset-wise "
                              "and inference SAEs can be folded into fixed weights")
    weights_path = next((folder / name for name in LLAMASCOPIUM_WEIGHTS if (folder / name).exists()), folder / LLAMASCOPIUM_WEIGHTS[0])
    tensors = read_tensors(weights_path)

    d_model = int(cfg["d_model"])
    d_sae = int(d_model * cfg["expansion_factor"])
    hook_in, hook_out = cfg["hook_point_in"], cfg["hook_point_out"]
    options: dict = {"architecture": LLAMASCOPIUM_ACT_FNS[act_fn], "d_sae": d_sae}
    if act_fn == "topk":
        options["k"] = int(cfg.get("top_k", 50))
    sae = build(options, d_in=d_model, d_out=d_model if hook_in != hook_out else None)
    sae.apply_b_dec_to_input = False
    names = {"W_enc": "W_E", "b_enc": "b_E", "W_dec": "W_D"}
    if cfg.get("use_decoder_bias", True):
        names["b_dec"] = "b_D"
    named = _rename(tensors, names, weights_path)
    named.setdefault("b_dec", torch.zeros(d_model, dtype=named["W_dec"].dtype))
    if act_fn == "jumprelu":
        named["threshold"] = _rename(tensors, {"t": "activation_function.log_jumprelu_threshold"}, weights_path)["t"].exp()
    sae = assign_tensors(sae, named, weights_path)

    if cfg.get("sparsity_include_decoder_norm", True):
        SAE.fold_decoder_norms(sae)  # thresholds already apply to pre * ||W_D||: leave them
    if norm_mode == "dataset-wise":
        norms = {key.removeprefix("dataset_average_activation_norm."): float(t)
                 for key, t in tensors.items() if key.startswith("dataset_average_activation_norm.")}
        missing = [h for h in dict.fromkeys((hook_in, hook_out)) if h not in norms]
        if missing:
            raise CheckpointError(f"{weights_path}: norm_activation is dataset-wise but dataset_average_activation_norm "
                                  f"is missing for {missing}")
        sae.fold_activation_scale(math.sqrt(d_model) / norms[hook_in], math.sqrt(d_model) / norms[hook_out])
    return sae
