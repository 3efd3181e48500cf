"""Per-feature running statistics of firing activations: count, sum, min, max and a histogram.

Shapes: F features, M firings of a chunk (``feature_M``, ``value_M``; a firing is an activation
> 0). The histogram has fixed log-spaced bins shared by every feature (:class:`LogBins`), so it
is updated with one scatter-add per chunk and its counts are exact: quantile bands built from
whole bins partition the firings exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class LogBins:
    """Bins ``[0, lo)``, then ``bins_per_decade`` log-spaced bins per decade from ``lo`` to ``hi``,
    then ``[hi, inf)``. ``edges`` (float64, length ``n + 1``) starts at 0 and ends at inf."""

    def __init__(self, lo: float, hi: float, bins_per_decade: int):
        self.lo, self.hi, self.per_decade = float(lo), float(hi), int(bins_per_decade)
        self.n_log = max(1, math.ceil(round(math.log10(hi / lo) * bins_per_decade, 9)))
        self.n = self.n_log + 2
        inner = lo * 10.0 ** (np.arange(self.n_log + 1) / bins_per_decade)
        inner[-1] = hi
        self.edges = np.concatenate([[0.0], inner, [np.inf]])
        self._log_lo = math.log10(lo)

    def index(self, value: torch.Tensor) -> torch.Tensor:
        """Bin index (int64) of each positive ``value``; values equal to an edge go to the bin above."""
        pos = ((value.double().log10() - self._log_lo) * self.per_decade).floor_().add_(1)
        idx = pos.clamp_(0, self.n_log + 1).long()
        # Floating-point log10 can land one bin off right at an edge: fix with the exact edges.
        edges = torch.from_numpy(self.edges).to(value.device)
        v = value.double()
        idx = idx - (v < edges[idx]).long()
        idx = idx + (v >= edges[(idx + 1).clamp_max(self.n)]).long()
        return idx.clamp_(0, self.n - 1)


class RunningStats:
    """Firing count, sum, min and max per feature, and the per-feature histogram ``[F, bins.n]``."""

    def __init__(self, n_features: int, bins: LogBins, device: torch.device | str = "cpu"):
        self.bins = bins
        self.count_F = torch.zeros(n_features, dtype=torch.int64, device=device)
        self.sum_F = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.max_F = torch.zeros(n_features, dtype=torch.float32, device=device)
        self.min_F = torch.full((n_features,), math.inf, dtype=torch.float32, device=device)
        self.hist_FH = torch.zeros(n_features, bins.n, dtype=torch.int64, device=device)

    def update(self, feature_M: torch.Tensor, value_M: torch.Tensor) -> None:
        """Add a chunk's firings (``value_M > 0``) of features ``feature_M``."""
        if feature_M.numel() == 0:
            return
        self.count_F.index_add_(0, feature_M, torch.ones_like(feature_M))
        self.sum_F.index_add_(0, feature_M, value_M.double())
        self.max_F.scatter_reduce_(0, feature_M, value_M, "amax")
        self.min_F.scatter_reduce_(0, feature_M, value_M, "amin")
        flat = feature_M * self.bins.n + self.bins.index(value_M)
        self.hist_FH.view(-1).index_add_(0, flat, torch.ones_like(flat))
