"""The shared half of every buffered ``ActivationStream``: a producer of row chunks (model
forwards, cache shards) runs ahead in a background thread, a ``ShuffleBuffer`` mixes the chunks,
and the stream's position advances only as the buffer takes a chunk, so a checkpoint never skips
one and a resumed run continues with exactly the same batches.

A subclass implements ``_produce(position)``: chunks from ``position`` on, each with the position
after it. Positions are plain dicts (saved in checkpoints).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from saes.activations.buffer import ShuffleBuffer
from saes.activations.prefetch import Prefetcher
from saes.activations.stream import Activations

Chunk = tuple[Activations, dict[str, Any]]
"""Rows ``{hook: [N, D]}`` and the producer's position after them."""


class ShuffledStream:
    """Batches ``{hook: [batch_size, D]}`` of a producer's rows through a shuffle buffer; the
    producer stops once ``max_rows`` rows were made. ``prefetch``: chunks made ahead in a thread."""

    def __init__(self, buffer_rows: int, batch_size: int, max_rows: int, seed: int, prefetch: int,
                 start: dict[str, Any]):
        self.max_rows = max_rows
        self.buffer = ShuffleBuffer(buffer_rows, batch_size, torch.Generator().manual_seed(seed))
        self.position = dict(start)
        """Where the producer resumes: past every chunk the buffer has taken."""
        self.rows_made = 0
        """Rows of the chunks the buffer has taken."""
        self.prefetch = prefetch
        self._prefetcher: Prefetcher | None = None
        self._chunks: Iterator[Activations] | None = None

    def _produce(self, position: dict[str, Any]) -> Iterator[Chunk]:
        """Chunks from ``position`` on, each with the position after it."""
        raise NotImplementedError

    def _limited(self) -> Iterator[Chunk]:
        rows = self.rows_made
        if rows >= self.max_rows:
            return
        for acts, after in self._produce(dict(self.position)):
            yield acts, after
            rows += next(iter(acts.values())).shape[0]
            if rows >= self.max_rows:
                return

    def _take(self) -> Iterator[Activations]:
        produced: Iterator[Chunk] = self._limited()
        if self.prefetch > 0:
            produced = self._prefetcher = Prefetcher(produced, self.prefetch)
        for acts, after in produced:  # the state advances as the buffer takes each chunk
            self.position = after
            self.rows_made += next(iter(acts.values())).shape[0]
            yield acts

    def close(self) -> None:
        """Stop a background producer (chunks made ahead are dropped; the state is unaffected)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self._chunks = None

    def sample(self, rows: int, seed: int) -> Activations:
        """A random sample of up to ``rows`` buffered rows, without consuming any (used to estimate
        normalization and b_dec before the first step)."""
        if self._chunks is None:
            self._chunks = self._take()
        if self.buffer.order is None:
            self.buffer.fill(self._chunks)
        return self.buffer.sample(rows, torch.Generator().manual_seed(seed))

    def next_batch(self) -> Activations | None:
        if self._chunks is None:
            self._chunks = self._take()
        return self.buffer.next_batch(self._chunks)

    def __iter__(self) -> Iterator[Activations]:
        while (batch := self.next_batch()) is not None:
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": dict(self.position), "rows_made": self.rows_made, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.rows_made = dict(state["position"]), state["rows_made"]
        self.buffer.load_state_dict(state["buffer"])
        self.close()
