"""Does an SAE fit a model's hooks? Checked from the model config, before any forward pass."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from saes.errors import ConfigError

if TYPE_CHECKING:
    from saes.sae.base import SAE

_D_MODEL = re.compile(
    r"^(hook_(pos_)?embed|ln_final\.hook_(normalized|in|out)"
    r"|blocks\.\d+\.(hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn_in|mlp_in|in|out)"
    r"|ln\d\.hook_(normalized|in|out)|(mlp|attn)\.hook_(in|out)))$"
)
_D_MLP = re.compile(r"^blocks\.\d+\.mlp\.hook_(pre|post|pre_linear)$")
_HEADS_Q = re.compile(r"^blocks\.\d+\.attn\.hook_(z|q)$")
_HEADS_KV = re.compile(r"^blocks\.\d+\.attn\.hook_(k|v)$")


class SAEMismatchError(ConfigError):
    """An SAE's width does not match the model hook it is applied to."""


def hook_width(model_cfg: Any, hook: str) -> int | None:
    """Width of a TransformerLens hook's activations (heads flattened) from the model config;
    None for hooks whose width the name does not tell."""
    if _D_MLP.search(hook):
        return getattr(model_cfg, "d_mlp", None)
    if _HEADS_Q.search(hook):
        return model_cfg.n_heads * model_cfg.d_head
    if _HEADS_KV.search(hook):
        return (getattr(model_cfg, "n_key_value_heads", None) or model_cfg.n_heads) * model_cfg.d_head
    if _D_MODEL.search(hook):
        return model_cfg.d_model
    return None


def check_sae_fits(sae: "SAE", model_cfg: Any, hook_in: str, hook_out: str | None = None) -> None:
    """Raise ``SAEMismatchError`` when ``sae.d_in`` (``d_out``) differs from the width of
    ``hook_in`` (``hook_out``) in a model with config ``model_cfg`` (e.g. ``model.cfg``)."""
    for role, hook, width in (("d_in", hook_in, sae.d_in), ("d_out", hook_out or hook_in, sae.d_out)):
        expected = hook_width(model_cfg, hook)
        if expected is not None and expected != width:
            name = getattr(model_cfg, "model_name", None) or "the model"
            raise SAEMismatchError(
                f"the SAE has {role}={width} but hook {hook!r} of {name} has width {expected}: the checkpoint was "
                "trained on another model or hook (its cfg.json metadata.hook_name says which); load a matching one"
            )
