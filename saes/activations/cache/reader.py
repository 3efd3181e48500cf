"""Training from a cache: ``CacheStream``, an ``ActivationStream`` over a cache's shards.

Each pass (epoch) visits the shards in a new order drawn from the seed; a shard's rows are read
memory-mapped (only the hooks a run needs) in a background thread while the SAEs step, and the
shuffle buffer mixes the rows of several shards (its capacity is several shards' rows), so a
batch holds rows of many shards. The position (epoch, shards taken) and the buffer are the
state: a resumed run continues with exactly the same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from saes.activations.cache.manifest import STORAGE_DTYPES, CacheError, Manifest, shard_dir
from saes.activations.shuffled import Chunk, ShuffledStream
from saes.activations.stream import Activations


def read_shard(folder: Path, manifest: Manifest, index: int, hooks: list[str]) -> Activations:
    """Rows ``{hook: [N, D]}`` (float32) of shard ``index``, read from memory-mapped files."""
    torch_dtype, _ = STORAGE_DTYPES[manifest.plan.dtype]
    out = {}
    for hook in hooks:
        path = shard_dir(folder, index) / f"{hook}.npy"
        try:
            stored = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"{path} could not be read ({err}): the cache {folder} is damaged; write it again") from None
        rows = torch.from_numpy(np.array(stored))
        out[hook] = (rows.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else rows).float()
    return out


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The order in which pass ``epoch`` visits the shards (a permutation drawn from the seed)."""
    return torch.randperm(n_shards, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


class CacheStream(ShuffledStream):
    """Batches of a cache's rows at ``hooks``, up to ``max_rows`` rows over at most ``epochs`` passes.
    ``share = (rank, ranks)``: this stream reads every ``ranks``-th shard of each pass's order from
    the ``rank``-th (the ranks of a distributed run read disjoint shards)."""

    def __init__(self, folder: str | Path, manifest: Manifest, hooks: list[str], buffer_rows: int, batch_size: int,
                 max_rows: int, seed: int, epochs: int = 1, prefetch: int = 1, share: tuple[int, int] = (0, 1)):
        super().__init__(buffer_rows, batch_size, max_rows, seed, prefetch, start={"epoch": 0, "shard": 0})
        self.folder, self.manifest, self.hooks = Path(folder), manifest, list(hooks)
        self.seed, self.epochs, self.share = seed, epochs, share

    def _produce(self, position: dict[str, Any]) -> Iterator[Chunk]:
        n = len(self.manifest.shards)
        epoch, taken = position["epoch"], position["shard"]
        while epoch < self.epochs:
            order = shard_order(n, self.seed, epoch)
            for k in range(taken, n):
                if k % self.share[1] != self.share[0]:
                    continue
                after = {"epoch": epoch, "shard": k + 1} if k + 1 < n else {"epoch": epoch + 1, "shard": 0}
                yield read_shard(self.folder, self.manifest, order[k], self.hooks), after
            epoch, taken = epoch + 1, 0
