"""Activations made by the model as training goes: corpus contexts -> model forwards -> shuffle
buffer -> batches (an ``ActivationStream``), with a ``state_dict`` so a resumed run continues with
exactly the same batches.

With ``prefetch`` > 0, up to that many model forwards run ahead in a background thread
(``saes.activations.prefetch``), overlapping the SAE steps; the batches are the same either way, and
the state counts only forwards the buffer has taken, so a checkpoint never skips one.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterator

import torch

from saes.activations.buffer import ShuffleBuffer
from saes.activations.forward import ModelForwards
from saes.activations.prefetch import Prefetcher
from saes.activations.stream import Activations
from saes.data import Corpus


class ModelActivationStream:
    """Yields ``{hook: [batch_size, D]}`` batches; forwards stop once ``max_rows`` rows were made."""

    def __init__(self, corpus: Corpus, source: ModelForwards, batch_contexts: int, buffer_rows: int,
                 batch_size: int, max_rows: int, seed: int, prefetch: int = 0):
        self.corpus = corpus
        self.source = source
        self.batch_contexts = batch_contexts
        self.max_rows = max_rows
        self.buffer = ShuffleBuffer(buffer_rows, batch_size, torch.Generator().manual_seed(seed))
        self.contexts_used = 0  # training contexts already turned into activations
        self.rows_made = 0  # activation rows of those contexts
        self.prefetch = prefetch
        self._prefetcher: Prefetcher | None = None
        self._forwards: Iterator[Activations] | None = None

    def _produce(self) -> Iterator[tuple[Activations, int, int]]:
        """``(activations, contexts used, rows)`` per forward, from the first context not yet taken."""
        contexts = (context for _, context in self.corpus.train_contexts(skip=self.contexts_used))
        rows = self.rows_made
        while rows < self.max_rows:
            batch = list(islice(contexts, self.batch_contexts))
            if not batch:
                return
            acts = self.source(torch.stack(batch))
            n_rows = next(iter(acts.values())).shape[0]
            rows += n_rows
            yield acts, len(batch), n_rows

    def _make_forwards(self) -> Iterator[Activations]:
        produced: Iterator[tuple[Activations, int, int]] = self._produce()
        if self.prefetch > 0:
            produced = self._prefetcher = Prefetcher(produced, self.prefetch)
        for acts, n_contexts, n_rows in produced:  # the state advances as the buffer takes each forward
            self.contexts_used += n_contexts
            self.rows_made += n_rows
            yield acts

    def close(self) -> None:
        """Stop a background producer (forwards made ahead are dropped; the state is unaffected)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self._forwards = None

    def sample(self, rows: int, seed: int) -> Activations:
        """A random sample of up to ``rows`` buffered rows, without consuming any (used to estimate
        normalization and b_dec before the first step)."""
        if self._forwards is None:
            self._forwards = self._make_forwards()
        if self.buffer.order is None:
            self.buffer.fill(self._forwards)
        return self.buffer.sample(rows, torch.Generator().manual_seed(seed))

    def next_batch(self) -> Activations | None:
        if self._forwards is None:
            self._forwards = self._make_forwards()
        return self.buffer.next_batch(self._forwards)

    def __iter__(self) -> Iterator[Activations]:
        while (batch := self.next_batch()) is not None:
            yield batch

    def state_dict(self) -> dict:
        return {"contexts_used": self.contexts_used, "rows_made": self.rows_made, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.contexts_used, self.rows_made = state["contexts_used"], state["rows_made"]
        self.buffer.load_state_dict(state["buffer"])
        self.close()
