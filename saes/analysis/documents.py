"""The finished analysis as MongoDB documents: one per feature, plus dictionary-level statistics.

A feature document (arrays packed by :func:`saes.store.pack_array`; F features, W window width)::

    {index, count, density, max_activation, mean_activation, min_activation,
     histogram: {edges: f32[n+1], counts: i32[n]},      # log-spaced bins spanning its firings
     top:    ExampleSet,                                 # by activation, largest first
     bands:  [{lo, hi, count, fraction, examples: ExampleSet}],  # quantile bands, low to high
     random: ExampleSet,                                 # uniformly random firings
     logits: {top: {tokens: [str], ids: i32, values: f32}, bottom: {...}},  # or null
     neighbours: {index: i32[k], cosine: f32[k]},        # or null
     strings: [str]}                                     # token texts the ExampleSets index

    ExampleSet = {value: f32[n], context: i32[n], position: i32[n], center: int,
                  tokens: i16[n, W] (index into strings, -1 = outside the context),
                  acts: f16[n, W]}

Every example is a window of W = before + 1 + after tokens with the firing token at ``center``;
``context`` is the index of the context in the analyzed stream and ``position`` the firing token's
position in it. :func:`expand_examples` turns an ExampleSet back into lists of strings and floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saes.analysis.accumulate import FeatureAccumulator
from saes.analysis.bands import band_ranges, quantile_bands
from saes.analysis.config import AnalysisConfig
from saes.analysis.tokens import TokenStrings
from saes.store.arrays import pack_array, unpack_array

DENSITY_BINS = 40


@dataclass
class WeightEffects:
    """Per-feature results computed from the weights (None when not applicable)."""

    logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None
    """``(top_ids_FK, top_values_FK, bottom_ids_FK, bottom_values_FK)``."""
    neighbours: tuple[torch.Tensor, torch.Tensor] | None
    """``(index_FK, cosine_FK)``."""


def feature_documents(
    acc: FeatureAccumulator, settings: AnalysisConfig, strings: TokenStrings, effects: WeightEffects
) -> Iterator[dict[str, Any]]:
    """Yield one document per feature, in index order (built lazily: memory stays bounded)."""
    stats = acc.stats
    count, total, vmax, vmin = (stats.count_F.numpy(), stats.sum_F.numpy(), stats.max_F.numpy(), stats.min_F.numpy())
    hist, edges = stats.hist_FH.numpy(), acc.bins.edges
    top = _slot_arrays(acc.top)
    res = _slot_arrays(acc.reservoir)
    res_bin = acc.bins.index(acc.reservoir.value_FN.clamp_min(1e-30)).numpy()
    logits = None if effects.logits is None else [t.numpy() for t in effects.logits]
    neighbours = None if effects.neighbours is None else [t.numpy() for t in effects.neighbours]
    strings.prefetch(np.unique(np.concatenate([top["tokens"].ravel(), res["tokens"].ravel()])))
    if logits is not None:
        strings.prefetch(np.unique(np.concatenate([logits[0].ravel(), logits[2].ravel()])))
    center = settings.window_before

    for f in range(acc.d_sae):
        n = int(count[f])
        doc: dict[str, Any] = {
            "index": f,
            "count": n,
            "density": n / acc.rows if acc.rows else 0.0,
            "max_activation": float(vmax[f]) if n else 0.0,
            "mean_activation": float(total[f] / n) if n else 0.0,
            "min_activation": float(vmin[f]) if n else 0.0,
        }
        sets: dict[str, np.ndarray] = {}
        filled = np.flatnonzero(top["key"][f] >= 0)
        sets["top"] = filled[np.argsort(-top["value"][f, filled], kind="stable")]
        filled = np.flatnonzero(res["key"][f] >= 0)
        by_key = filled[np.argsort(-res["key"][f, filled], kind="stable")]  # a uniformly random order
        sets["random"] = by_key[: settings.random_samples]
        bands = quantile_bands(hist[f], settings.bands) if n else []
        band_docs = []
        for b, ((first, end), (lo, hi)) in enumerate(zip(bands, band_ranges(bands, edges, vmin[f], vmax[f]))):
            members = by_key[(res_bin[f, by_key] >= first) & (res_bin[f, by_key] < end)][: settings.samples_per_band]
            sets[f"band{b}"] = members[np.argsort(-res["value"][f, members], kind="stable")]
            in_band = int(hist[f, first:end].sum())
            band_docs.append({"lo": lo, "hi": hi, "count": in_band, "fraction": in_band / n})
        ids = np.concatenate([(top if k == "top" else res)["tokens"][f, sel].ravel() for k, sel in sets.items()])
        vocab = np.unique(ids[ids >= 0])
        doc["strings"] = strings(vocab)
        packed = {k: _example_set(top if k == "top" else res, f, sel, vocab, center) for k, sel in sets.items()}
        if n:
            lo_bin, hi_bin = bands[0][0], bands[-1][1]
            doc["histogram"] = {
                "edges": pack_array(np.clip(edges[lo_bin : hi_bin + 1], vmin[f], vmax[f]), "float32"),
                "counts": pack_array(hist[f, lo_bin:hi_bin], "int32"),
            }
        else:
            doc["histogram"] = None
        doc["top"] = packed["top"]
        doc["bands"] = [{**band, "examples": packed[f"band{b}"]} for b, band in enumerate(band_docs)]
        doc["random"] = packed["random"]
        doc["logits"] = None if logits is None else {
            "top": {"tokens": strings(logits[0][f]), "ids": pack_array(logits[0][f], "int32"),
                    "values": pack_array(logits[1][f], "float32")},
            "bottom": {"tokens": strings(logits[2][f]), "ids": pack_array(logits[2][f], "int32"),
                       "values": pack_array(logits[3][f], "float32")},
        }  # fmt: skip
        doc["neighbours"] = None if neighbours is None else {
            "index": pack_array(neighbours[0][f], "int32"), "cosine": pack_array(neighbours[1][f], "float32")
        }
        yield doc


def dictionary_stats(acc: FeatureAccumulator) -> dict[str, Any]:
    """Whole-dictionary statistics: alive/dead counts, L0, and the histogram of log10 densities."""
    count = acc.stats.count_F.numpy()
    alive = count > 0
    rows = max(acc.rows, 1)
    log_density = np.log10(count[alive] / rows)
    lo = np.floor(np.log10(1 / rows) * 10) / 10
    edges = np.linspace(lo, 0.0, DENSITY_BINS + 1)
    counts, _ = np.histogram(log_density, bins=edges)
    return {
        "tokens": acc.rows,
        "positions": acc.positions,
        "contexts": acc.contexts,
        "n_features": acc.d_sae,
        "alive": int(alive.sum()),
        "dead": int((~alive).sum()),
        "dead_fraction": float((~alive).mean()),
        "l0": float(count.sum() / rows),
        "density_histogram": {"log10_edges": pack_array(edges, "float32"), "counts": pack_array(counts, "int32")},
    }


def expand_examples(example_set: Mapping[str, Any], strings: list[str]) -> list[dict[str, Any]]:
    """An ExampleSet as a list of ``{value, context, position, center, tokens: [str], acts: [float]}``,
    with the positions outside the context dropped (``center`` is shifted accordingly)."""
    value, context, position = (unpack_array(example_set[k]) for k in ("value", "context", "position"))
    tokens, acts = unpack_array(example_set["tokens"]), unpack_array(example_set["acts"])
    out = []
    for i in range(value.shape[0]):
        inside = tokens[i] >= 0
        first = int(np.argmax(inside))
        out.append({
            "value": float(value[i]), "context": int(context[i]), "position": int(position[i]),
            "center": int(example_set["center"]) - first,
            "tokens": [strings[t] for t in tokens[i][inside]], "acts": acts[i][inside].astype(float).tolist(),
        })  # fmt: skip
    return out


def _slot_arrays(slots: Any) -> dict[str, np.ndarray]:
    return {"key": slots.key_FN.numpy(), "value": slots.value_FN.numpy(), "context": slots.context_FN.numpy(),
            "position": slots.position_FN.numpy(), "acts": slots.acts_FNW.numpy(), "tokens": slots.tokens_FNW.numpy()}  # fmt: skip


def _example_set(arrays: dict[str, np.ndarray], f: int, sel: np.ndarray, vocab: np.ndarray, center: int) -> dict[str, Any]:
    tokens = arrays["tokens"][f, sel]
    local = np.where(tokens >= 0, np.searchsorted(vocab, tokens), -1)
    return {
        "value": pack_array(arrays["value"][f, sel], "float32"),
        "context": pack_array(arrays["context"][f, sel], "int32"),
        "position": pack_array(arrays["position"][f, sel], "int32"),
        "center": center,
        "tokens": pack_array(local, "int16" if vocab.size < 2**15 else "int32"),
        "acts": pack_array(arrays["acts"][f, sel], "float16"),
    }
