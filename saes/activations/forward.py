"""Model forwards -> activation rows ``{hook: [N, D]}`` at one or more hooks.

One forward captures every requested hook and stops after the deepest hooked block. Rows are
kept only at positions whose token is not special (when ``data.exclude_special``), so the
activations of one forward are ``[N, D]`` per hook with the same N rows for every hook.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterator

import torch

from saes.activations.hooks import stop_at_layer, validate_hooks

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def keep_mask(tokens_BT: torch.Tensor, excluded_ids: torch.Tensor | None) -> torch.Tensor:
    """Bool ``[B, T]``: positions whose token is not one of ``excluded_ids`` (all when None)."""
    if excluded_ids is None:
        return torch.ones_like(tokens_BT, dtype=torch.bool)
    return ~torch.isin(tokens_BT, excluded_ids.to(tokens_BT.device))


class ModelForwards:
    """Runs the model on token contexts and returns per-hook activation rows."""

    def __init__(
        self,
        model: "TransformerBridge",
        hook_names: list[str],
        excluded_ids: torch.Tensor | None,
        device: str | torch.device = "cpu",
    ):
        self.model = model
        self.hook_names = list(dict.fromkeys(hook_names))
        validate_hooks(self.hook_names, model.hook_dict.keys(), model.cfg.n_layers)
        self.stop = stop_at_layer(self.hook_names, model.cfg.n_layers)
        self.excluded_ids = excluded_ids
        self.device = torch.device(device)
        self.forwards = 0
        """Number of model forwards run so far (one per batch of contexts, whatever the hooks)."""
        self.lock = threading.Lock()
        """Held during each forward; hold it to run the model from another thread meanwhile (hooks
        added by one thread's forward would fire in the other's)."""

    def keep_mask(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T]``: positions whose activations are used."""
        return keep_mask(tokens_BT, self.excluded_ids)

    @torch.inference_mode()
    def __call__(self, tokens_BT: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations ``{hook: [N, D]}`` (float32, on ``device``) at kept positions."""
        model_device = next(self.model.parameters()).device
        tokens_BT = tokens_BT.to(model_device)
        with self.lock:
            _, cache = self.model.run_with_cache(tokens_BT, names_filter=self.hook_names, stop_at_layer=self.stop)
            self.forwards += 1
        keep_BT = self.keep_mask(tokens_BT)
        return {h: cache[h][keep_BT].to(self.device, torch.float32) for h in self.hook_names}

    def stream(self, contexts: Iterator[torch.Tensor], batch_contexts: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``batch_contexts`` contexts per forward; yields one activation dict per forward."""
        batch: list[torch.Tensor] = []
        for context in contexts:
            batch.append(context)
            if len(batch) == batch_contexts:
                yield self(torch.stack(batch))
                batch = []
        if batch:
            yield self(torch.stack(batch))
