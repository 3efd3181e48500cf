"""The streaming pass: contexts -> one model forward per batch -> SAE encode in chunks -> accumulator.

The forward stops after the hooked block and returns every position (excluded ones are zeroed by
the accumulator, after the encode). Dense activations exist for one chunk at a time: at most
``CHUNK_ELEMENTS`` floats (64 MB), whatever the number of latents.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from saes.activations import ModelForwards
from saes.analysis.accumulate import FeatureAccumulator
from saes.sae.base import SAE

CHUNK_ELEMENTS = 2**24


@dataclass
class StreamTimes:
    """Seconds spent in each stage of the streaming pass."""

    forward: float = 0.0
    encode: float = 0.0
    accumulate: float = 0.0
    contexts: int = 0
    positions: int = 0
    seconds: float = 0.0
    per_batch: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.positions / max(self.seconds, 1e-9)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small scatter/gather ops on one intra-op thread: on small CPUs the thread hand-off costs
    more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batches(contexts: Iterable[torch.Tensor], batch_contexts: int, n_contexts: int) -> Iterator[torch.Tensor]:
    """``[B, T]`` token batches of the first ``n_contexts`` contexts."""
    batch: list[torch.Tensor] = []
    for i, context in enumerate(contexts):
        if i >= n_contexts:
            break
        batch.append(context)
        if len(batch) == batch_contexts:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def analyze_stream(
    source: ModelForwards,
    sae: SAE,
    acc: FeatureAccumulator | None,
    token_batches: Iterable[torch.Tensor],
    keep_fn: Callable[[torch.Tensor], torch.Tensor],
    total_positions: int | None = None,
    progress: bool = True,
) -> StreamTimes:
    """Run every batch through model and SAE into ``acc`` (None: forward and encode only, the
    benchmark's floor). Returns the time spent per stage."""
    hook = source.hook_names[0]
    sae_device = next(sae.parameters()).device
    times = StreamTimes()
    start = time.perf_counter()
    with tqdm(total=total_positions, unit="tok", unit_scale=True, dynamic_ncols=True, desc="analyze",
              smoothing=0, mininterval=0.5, disable=not progress) as bar:  # fmt: skip
        for tokens_BT in token_batches:
            t0 = time.perf_counter()
            x_ND = source(tokens_BT)[hook].to(sae_device)
            keep_BT = keep_fn(tokens_BT).to(sae_device)
            t1 = time.perf_counter()
            times.forward += t1 - t0
            n_ctx, ctx_len = tokens_BT.shape
            per_chunk = math.ceil(n_ctx / math.ceil(n_ctx * ctx_len * sae.d_sae / CHUNK_ELEMENTS))
            for c in range(0, n_ctx, per_chunk):
                t2 = time.perf_counter()
                acts_RF = sae.encode(x_ND[c * ctx_len : (c + per_chunk) * ctx_len])
                t3 = time.perf_counter()
                times.encode += t3 - t2
                if acc is not None:
                    with single_thread():
                        acc.update(acts_RF, tokens_BT[c : c + per_chunk].to(sae_device), keep_BT[c : c + per_chunk])
                    times.accumulate += time.perf_counter() - t3
            times.contexts += n_ctx
            times.positions += n_ctx * ctx_len
            times.per_batch.append(time.perf_counter() - t0)
            bar.update(n_ctx * ctx_len)
    times.seconds = time.perf_counter() - start
    return times
