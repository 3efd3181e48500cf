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
    """Batches of rows from model forwards of ``batch_contexts`` training contexts each.
    ``share = (rank, ranks)``: this stream takes every ``ranks``-th context from the ``rank``-th
    (the ranks of a distributed run forward disjoint contexts)."""

    def __init__(self, corpus: Corpus, source: ModelForwards, batch_contexts: int, buffer_rows: int,
                 batch_size: int, max_rows: int, seed: int, prefetch: int = 0, share: tuple[int, int] = (0, 1)):
        super().__init__(buffer_rows, batch_size, max_rows, seed, prefetch, start={"contexts_used": 0})
        self.corpus = corpus
        self.source = source
        self.batch_contexts = batch_contexts
        self.share = share

    @property
    def contexts_used(self) -> int:
        """Training contexts already turned into rows the buffer took."""
        return self.position["contexts_used"]

    def _produce(self, position: dict[str, Any]) -> Iterator[Chunk]:
        used = position["contexts_used"]
        rank, ranks = self.share
        contexts = ((i, context) for i, (_, context) in enumerate(self.corpus.train_contexts(skip=used), used)
                    if i % ranks == rank)
        while batch := list(islice(contexts, self.batch_contexts)):
            used = batch[-1][0] + 1  # contexts of the whole corpus read so far
            yield self.source(torch.stack([context for _, context in batch])), {"contexts_used": used}
