"""Model forwards -> activation rows at one or more hooks, and a bounded shuffle buffer.

One forward captures every requested hook and stops after the deepest hooked block. Rows are
kept only at positions whose token is not special (when ``data.exclude_special``), so the
activations of one forward are ``[N, D]`` per hook with the same N rows for every hook.
"""

from __future__ import annotations

import difflib
import re
import threading
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
        self.lock = threading.Lock()
        """Held during each forward; hold it to run the model from another thread meanwhile (hooks
        added by one thread's forward would fire in the other's)."""

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


class ShuffleBuffer:
    """Bounded-memory shuffling of aligned activation rows (one tensor per hook).

    Fills to ``capacity`` rows, then emits about half of them in random order, in batches, and
    refills, so a batch mixes rows from many forwards. Memory: ``capacity * sum(D)`` values. All
    state is explicit (``state_dict``), so a run can stop at any step and resume exactly.
    """

    def __init__(self, capacity: int, batch_size: int, generator: torch.Generator):
        if capacity < 2:
            raise ConfigError(f"activations.buffer_tokens={capacity} must be at least 2")
        self.capacity = capacity
        self.batch_size = batch_size
        self.generator = generator
        self.store: dict[str, torch.Tensor] = {}
        self.filled = 0
        self.order: torch.Tensor | None = None  # emission order of this cycle (row indices)
        self.cursor = 0  # rows of ``order`` emitted so far
        self.out_rows = 0  # rows of ``order`` emitted this cycle; the rest are kept
        self.pending: dict[str, torch.Tensor] | None = None  # source rows not yet stored
        self.exhausted = False

    def _fill(self, source: Iterator[dict[str, torch.Tensor]]) -> None:
        while self.filled < self.capacity and not self.exhausted:
            if self.pending is None:
                self.pending = next(source, None)
                if self.pending is None:
                    self.exhausted = True
                    return
            n = next(iter(self.pending.values())).shape[0]
            take = min(n, self.capacity - self.filled)
            for name, rows in self.pending.items():
                if name not in self.store:
                    self.store[name] = torch.empty(self.capacity, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
                self.store[name][self.filled : self.filled + take] = rows[:take]
            self.filled += take
            self.pending = {k: v[take:] for k, v in self.pending.items()} if take < n else None

    def _start_cycle(self) -> None:
        self.order = torch.randperm(self.filled, generator=self.generator)
        self.cursor = 0
        if self.exhausted:  # drain everything; the last batch may be short
            self.out_rows = self.filled
        else:  # about half, in whole batches
            self.out_rows = min(self.filled, max(self.batch_size, self.filled // 2 // self.batch_size * self.batch_size))

    def _end_cycle(self) -> None:
        assert self.order is not None
        keep = self.order[self.out_rows :]
        for name, store in self.store.items():
            store[: keep.numel()] = store[keep.to(store.device)]
        self.filled = keep.numel()
        self.order = None

    def next_batch(self, source: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
        """The next ``{hook: [batch_size, D]}`` batch, or None once ``source`` is drained."""
        if self.order is not None and self.cursor >= self.out_rows:
            self._end_cycle()
        if self.order is None:
            self._fill(source)
            if self.filled == 0:
                return None
            self._start_cycle()
        assert self.order is not None
        idx = self.order[self.cursor : min(self.cursor + self.batch_size, self.out_rows)]
        self.cursor += idx.numel()
        return {name: store[idx.to(store.device)] for name, store in self.store.items()}

    def batches(self, source: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Yield shuffled batches until ``source`` is exhausted and the buffer drained."""
        while (batch := self.next_batch(source)) is not None:
            yield batch

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: stored rows, cycle order, pending rows, RNG."""
        return {
            "store": {k: v[: self.filled].clone() for k, v in self.store.items()},
            "filled": self.filled,
            "order": self.order,
            "cursor": self.cursor,
            "out_rows": self.out_rows,
            "pending": self.pending,
            "exhausted": self.exhausted,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.store = {}
        for name, rows in state["store"].items():
            self.store[name] = torch.empty(self.capacity, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
            self.store[name][: rows.shape[0]] = rows
        self.filled = state["filled"]
        self.order, self.cursor, self.out_rows = state["order"], state["cursor"], state["out_rows"]
        self.pending, self.exhausted = state["pending"], state["exhausted"]
        self.generator.set_state(state["generator"])
