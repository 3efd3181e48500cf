"""The training activation stream: corpus contexts -> model forwards -> shuffle buffer -> batches,
with a ``state_dict`` so a resumed run continues with exactly the same batches."""

from __future__ import annotations

from typing import Iterator

import torch

from saes.activations import ActivationSource, ShuffleBuffer
from saes.data import Corpus


class TrainingStream:
    """Yields ``{hook: [batch_size, D]}`` batches; forwards stop once ``max_rows`` rows were made."""

    def __init__(self, corpus: Corpus, source: ActivationSource, batch_contexts: int, buffer_rows: int,
                 batch_size: int, max_rows: int, seed: int):
        self.corpus = corpus
        self.source = source
        self.batch_contexts = batch_contexts
        self.max_rows = max_rows
        self.buffer = ShuffleBuffer(buffer_rows, batch_size, torch.Generator().manual_seed(seed))
        self.contexts_used = 0  # training contexts already turned into activations
        self.rows_made = 0
        self._forwards: Iterator[dict[str, torch.Tensor]] | None = None

    def _make_forwards(self) -> Iterator[dict[str, torch.Tensor]]:
        contexts = (context for _, context in self.corpus.train_contexts(skip=self.contexts_used))
        batch: list[torch.Tensor] = []
        while self.rows_made < self.max_rows:
            batch = [c for _, c in zip(range(self.batch_contexts), contexts)]
            if not batch:
                return
            acts = self.source(torch.stack(batch))
            self.contexts_used += len(batch)
            self.rows_made += next(iter(acts.values())).shape[0]
            yield acts

    def peek(self, rows: int, seed: int) -> dict[str, torch.Tensor]:
        """A random sample of up to ``rows`` buffered rows, without consuming any (used to estimate
        normalization and b_dec before the first step)."""
        if self._forwards is None:
            self._forwards = self._make_forwards()
        if self.buffer.order is None:
            self.buffer._fill(self._forwards)
        pick = torch.randperm(self.buffer.filled, generator=torch.Generator().manual_seed(seed))[:rows]
        return {name: store[pick.to(store.device)] for name, store in self.buffer.store.items()}

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        if self._forwards is None:
            self._forwards = self._make_forwards()
        return self.buffer.next_batch(self._forwards)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while (batch := self.next_batch()) is not None:
            yield batch

    def state_dict(self) -> dict:
        return {"contexts_used": self.contexts_used, "rows_made": self.rows_made, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.contexts_used, self.rows_made = state["contexts_used"], state["rows_made"]
        self.buffer.load_state_dict(state["buffer"])
        self._forwards = None
