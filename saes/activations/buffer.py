"""A bounded shuffle buffer over aligned activation rows ``{hook: [N, D]}``."""

from __future__ import annotations

from typing import Iterator

import torch

from saes.errors import ConfigError


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

    def fill(self, source: Iterator[dict[str, torch.Tensor]]) -> None:
        """Take rows from ``source`` until full (or ``source`` ends); nothing is emitted."""
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
            self.fill(source)
            if self.filled == 0:
                return None
            self._start_cycle()
        assert self.order is not None
        idx = self.order[self.cursor : min(self.cursor + self.batch_size, self.out_rows)]
        self.cursor += idx.numel()
        return {name: store[idx.to(store.device)] for name, store in self.store.items()}

    def sample(self, rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Up to ``rows`` of the stored rows, drawn with ``generator``, without consuming any."""
        pick = torch.randperm(self.filled, generator=generator)[:rows]
        return {name: store[pick.to(store.device)] for name, store in self.store.items()}

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
