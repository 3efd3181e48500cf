"""Activations made by the model as training goes: corpus contexts -> model forwards -> shuffle
buffer -> batches (an ``ActivationStream``; see ``saes.activations.shuffled`` for prefetching and
exact resume). The position is the number of training contexts already turned into rows.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterator

import torch

from saes.activations.forward import ModelForwards
from saes.activations.shuffled import Chunk, ShuffledStream
from saes.data import Corpus


class ModelActivationStream(ShuffledStream):
    """Batches of rows from model forwards of ``batch_contexts`` training contexts each."""

    def __init__(self, corpus: Corpus, source: ModelForwards, batch_contexts: int, buffer_rows: int,
                 batch_size: int, max_rows: int, seed: int, prefetch: int = 0):
        super().__init__(buffer_rows, batch_size, max_rows, seed, prefetch, start={"contexts_used": 0})
        self.corpus = corpus
        self.source = source
        self.batch_contexts = batch_contexts

    @property
    def contexts_used(self) -> int:
        """Training contexts already turned into rows the buffer took."""
        return self.position["contexts_used"]

    def _produce(self, position: dict[str, Any]) -> Iterator[Chunk]:
        used = position["contexts_used"]
        contexts = (context for _, context in self.corpus.train_contexts(skip=used))
        while batch := list(islice(contexts, self.batch_contexts)):
            used += len(batch)
            yield self.source(torch.stack(batch)), {"contexts_used": used}
