"""Activation quantile bands of one feature, built from whole histogram bins.

Each band is a run of consecutive histogram bins holding about ``1/n`` of the feature's firings.
Because bands are unions of whole bins, the histogram counts give each band's exact share of the
firings, and the bands partition the firings: every firing is in exactly one band. Several
quantiles inside one bin merge (fewer bands for features whose firings span few bins).
"""

from __future__ import annotations

import numpy as np


def quantile_bands(counts_H: np.ndarray, n_bands: int) -> list[tuple[int, int]]:
    """Bands as ``(first_bin, end_bin)`` (end exclusive) from the first to the last non-empty bin,
    in increasing activation order; every band holds at least one firing. Empty list: no firings."""
    nonzero = np.flatnonzero(counts_H)
    if nonzero.size == 0:
        return []
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    cum = np.cumsum(counts_H[lo:hi], dtype=np.int64)
    targets = cum[-1] * np.arange(1, n_bands, dtype=np.float64) / n_bands
    cuts = np.unique(np.searchsorted(cum, targets, side="left") + 1)
    cuts = cuts[(cuts > 0) & (cuts < hi - lo)]
    bounds = [lo, *(lo + int(c) for c in cuts), hi]
    return list(zip(bounds[:-1], bounds[1:]))


def band_ranges(
    bands: list[tuple[int, int]], edges: np.ndarray, min_value: float, max_value: float
) -> list[tuple[float, float]]:
    """Activation range ``[lo, hi)`` of each band (the last one closed at ``max_value``): histogram
    edges clipped to the feature's smallest and largest firing."""
    return [(float(max(edges[a], min_value)), float(min(edges[b], max_value))) for a, b in bands]
