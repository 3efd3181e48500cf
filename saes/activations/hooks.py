"""TransformerLens hook names: which block a hook is in, whether a model has it, how many blocks
a forward must run so every hook fires, and the width of a hook's vectors (one place for each)."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, Iterable

from saes.errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


class HookError(ConfigError):
    """A hook name or layer does not exist in the model; the message lists valid ones."""


def hook_layer(hook: str) -> int | None:
    """Block index of a ``blocks.L.*`` hook, None for hooks outside the blocks."""
    match = BLOCK_HOOK.match(hook)
    return int(match.group(1)) if match else None


def validate_hooks(hook_names: Iterable[str], valid: Iterable[str], n_layers: int) -> None:
    """Raise ``HookError`` naming the closest valid hooks, or the layer count if out of range."""
    valid = list(valid)
    valid_set = set(valid)
    for hook in hook_names:
        layer = hook_layer(hook)
        if layer is not None and layer >= n_layers:
            raise HookError(f"hook {hook!r}: layer {layer} is out of range; the model has {n_layers} layers (0-{n_layers - 1})")
        if hook not in valid_set:
            near = difflib.get_close_matches(hook, valid, n=6, cutoff=0.6)
            raise HookError(f"hook {hook!r} does not exist in this model; closest valid names: {near}")


def stop_at_layer(hook_names: Iterable[str], n_layers: int) -> int | None:
    """Blocks to run so every hook fires: the deepest hooked block + 1 (None: all of them)."""
    layers = [hook_layer(h) for h in hook_names]
    if any(layer is None for layer in layers):
        return None
    deepest = max(layers) + 1  # type: ignore[type-var]
    return None if deepest >= n_layers else deepest


_D_MODEL = re.compile(
    r"^(hook_(pos_)?embed|embed\.hook_out|ln_final\.hook_(normalized|in|out)"
    r"|blocks\.\d+\.(hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn_in|mlp_in|in|out)"
    r"|ln\d\.hook_(normalized|in|out)|(mlp|attn)\.hook_(in|out)))$"
)
_D_MLP = re.compile(r"^blocks\.\d+\.mlp\.hook_(pre|post|pre_linear)$")
_HEADS_Q = re.compile(r"^blocks\.\d+\.attn\.hook_(z|q)$")
_HEADS_KV = re.compile(r"^blocks\.\d+\.attn\.hook_(k|v)$")


def is_residual(hook: str) -> bool:
    """Whether ``hook`` carries d_model-wide vectors of the residual stream (or a block's in/out)."""
    return bool(_D_MODEL.match(hook))


def hook_width(model_cfg: Any, hook: str) -> int | None:
    """Width of a hook's activations (heads flattened) from the model config (e.g. ``model.cfg``);
    None for hooks whose width the name does not tell."""
    if _D_MLP.match(hook):
        return getattr(model_cfg, "d_mlp", None)
    if _HEADS_Q.match(hook):
        return model_cfg.n_heads * model_cfg.d_head
    if _HEADS_KV.match(hook):
        return (getattr(model_cfg, "n_key_value_heads", None) or model_cfg.n_heads) * model_cfg.d_head
    if _D_MODEL.match(hook):
        return model_cfg.d_model
    return None


def probe_hook_width(model: "TransformerBridge", hook: str) -> int:
    """Width of the vectors at ``hook``: from its name when it tells (no forward), else from a
    one-context, two-token probe forward. A hook holding matrices per position raises ``ConfigError``."""
    import torch

    width = hook_width(model.cfg, hook)
    if width is not None:
        return int(width)
    probe = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    _, cache = model.run_with_cache(probe, names_filter=[hook], stop_at_layer=stop_at_layer([hook], model.cfg.n_layers))
    shape = tuple(cache[hook].shape[2:])
    if len(shape) != 1:
        raise ConfigError(f"hook {hook!r} holds {shape}-shaped values per position; an SAE reads vectors")
    return int(shape[0])
