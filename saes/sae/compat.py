"""Does an SAE fit a model's hooks? Checked from the model config, before any forward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saes.activations.hooks import hook_width
from saes.errors import ConfigError

if TYPE_CHECKING:
    from saes.sae.base import SAE


class SAEMismatchError(ConfigError):
    """An SAE's width does not match the model hook it is applied to."""


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
