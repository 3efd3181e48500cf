"""Model forwards -> activation rows at one or more hooks, and a bounded shuffle buffer.

One forward captures every requested hook and stops after the deepest hooked block. Rows are
kept only at positions whose token is not special (when ``data.exclude_special``), so the
activations of one forward are ``[N, D]`` per hook with the same N rows for every hook.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

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


class ActivationSource:
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

    def keep_mask(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T]``: positions whose activations are used."""
        if self.excluded_ids is None:
            return torch.ones_like(tokens_BT, dtype=torch.bool)
        return ~torch.isin(tokens_BT, self.excluded_ids.to(tokens_BT.device))

    @torch.inference_mode()
    def __call__(self, tokens_BT: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations ``{hook: [N, D]}`` (float32, on ``device``) at kept positions."""
        model_device = next(self.model.parameters()).device
        tokens_BT = tokens_BT.to(model_device)
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


class ShuffleBuffer:
    """Bounded-memory shuffling of aligned activation rows (one tensor per hook).

    Fills to ``capacity`` rows, then yields random batches from half of them and refills, so a
    batch mixes rows from many forwards. Memory: ``capacity * sum(D)`` floats.
    """

    def __init__(self, capacity: int, generator: torch.Generator | None = None):
        if capacity < 2:
            raise ConfigError(f"activations.buffer_tokens={capacity} must be at least 2")
        self.capacity = capacity
        self.generator = generator
        self.store: dict[str, torch.Tensor] = {}
        self.filled = 0

    def _append(self, rows: dict[str, torch.Tensor], start: int) -> int:
        """Copy rows from ``start`` into free slots; returns the next unconsumed row."""
        n = next(iter(rows.values())).shape[0]
        take = min(n - start, self.capacity - self.filled)
        for name, tensor in rows.items():
            if name not in self.store:
                self.store[name] = torch.empty(self.capacity, tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
            self.store[name][self.filled : self.filled + take] = tensor[start : start + take]
        self.filled += take
        return start + take

    def batches(self, source: Iterator[dict[str, torch.Tensor]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``{hook: [batch_size, D]}`` shuffled batches until ``source`` is exhausted."""
        pending: dict[str, torch.Tensor] | None = None
        start = 0
        exhausted = False
        while True:
            while self.filled < self.capacity and not exhausted:
                if pending is None or start >= next(iter(pending.values())).shape[0]:
                    pending = next(source, None)
                    start = 0
                    if pending is None:
                        exhausted = True
                        break
                start = self._append(pending, start)
            if self.filled == 0:
                return
            order = torch.randperm(self.filled, generator=self.generator, device="cpu")
            if exhausted:  # drain everything; the last batch may be short
                out_rows = self.filled
            else:  # emit about half, in whole batches
                out_rows = min(self.filled, max(batch_size, self.filled // 2 // batch_size * batch_size))
            emit, keep = order[:out_rows], order[out_rows:]
            for i in range(0, out_rows, batch_size):
                idx = emit[i : i + batch_size]
                yield {name: store[idx.to(store.device)] for name, store in self.store.items()}
            for name, store in self.store.items():
                store[: keep.numel()] = store[keep.to(store.device)]
            self.filled = keep.numel()
            if exhausted and self.filled == 0:
                return
