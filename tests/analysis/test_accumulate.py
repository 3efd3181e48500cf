"""The streaming state on synthetic activations, against brute force over all chunks at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saes.analysis.accumulate import FeatureAccumulator
from saes.analysis.bands import band_ranges, quantile_bands
from saes.analysis.config import AnalysisConfig
from saes.analysis.stats import LogBins

F, T, C = 64, 32, 8  # features, context length, contexts per chunk


def synthetic(n_chunks: int, seed: int = 0, l0: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Chunks of sparse activations (feature f fires with rate ~ (f+1)/F, values spanning decades,
    duplicate values included), token ids and keep masks (position 0 excluded, like BOS)."""
    gen = torch.Generator().manual_seed(seed)
    acts, tokens, keeps = [], [], []
    rate = (torch.arange(F) + 1.0) / F
    for _ in range(n_chunks):
        scores = torch.rand(C * T, F, generator=gen) * rate
        idx = scores.topk(l0, dim=1).indices
        vals = 10 ** (torch.rand(C * T, l0, generator=gen) * 4 - 2)
        vals[::7] = 1.5  # exact ties
        acts.append(torch.zeros(C * T, F).scatter_(1, idx, vals))
        tokens.append(torch.randint(0, 1000, (C, T), generator=gen))
        keep = torch.ones(C, T, dtype=torch.bool)
        keep[:, 0] = False
        keeps.append(keep)
    return acts, tokens, keeps


def run(settings: AnalysisConfig, acts, tokens, keeps, split: int = 1) -> FeatureAccumulator:
    acc = FeatureAccumulator(F, settings)
    for a, t, k in zip(acts, tokens, keeps):
        step = C // split
        for c in range(0, C, step):
            acc.update(a[c * T : (c + step) * T].clone(), t[c : c + step], k[c : c + step])
    return acc


def test_statistics_and_top_examples_equal_brute_force():
    settings = AnalysisConfig(top_n=5, window_before=3, window_after=2, reservoir=7)
    acts, tokens, keeps = synthetic(6)
    acc = run(settings, acts, tokens, keeps)
    all_acts = torch.cat(acts).clone()
    all_acts.view(-1, T, F)[:, 0] = 0  # excluded positions never count
    all_tokens = torch.cat(tokens)
    fired = all_acts > 0
    assert torch.equal(acc.stats.count_F, fired.sum(0))
    torch.testing.assert_close(acc.stats.sum_F, all_acts.double().sum(0))
    torch.testing.assert_close(acc.stats.max_F, all_acts.max(0).values)
    assert torch.equal(acc.stats.min_F, torch.where(fired, all_acts, torch.inf).min(0).values)
    assert acc.rows == 6 * C * (T - 1) and acc.contexts == 6 * C
    bins = LogBins(settings.hist_min, settings.hist_max, settings.hist_bins_per_decade)
    for f in range(F):
        v = all_acts[:, f][fired[:, f]].double().numpy()
        expected = np.bincount(np.searchsorted(bins.edges, v, side="right") - 1, minlength=bins.n)
        assert np.array_equal(acc.stats.hist_FH[f].numpy(), expected)

        top = all_acts[:, f].topk(5).values
        kept = acc.top.key_FN[f] >= 0
        assert torch.equal(acc.top.value_FN[f][kept].sort(descending=True).values, top[top > 0])
        for s in kept.nonzero().squeeze(1).tolist():
            c, p = int(acc.top.context_FN[f, s]), int(acc.top.position_FN[f, s])
            assert p > 0 and all_acts[c * T + p, f] == acc.top.value_FN[f, s]
            for w, q in enumerate(range(p - 3, p + 3)):  # the window, padded outside the context
                inside = 0 <= q < T
                assert acc.top.tokens_FNW[f, s, w] == (all_tokens[c, q] if inside else -1)
                expected_act = all_acts[c * T + q, f].half() if inside else 0
                assert acc.top.acts_FNW[f, s, w] == expected_act


def test_chunk_boundaries_do_not_change_the_results():
    settings = AnalysisConfig(top_n=4, reservoir=5, window_before=2, window_after=2)
    acts, tokens, keeps = synthetic(4, seed=1)
    one, four = run(settings, acts, tokens, keeps, split=1), run(settings, acts, tokens, keeps, split=4)
    for name in ("count_F", "sum_F", "max_F", "min_F", "hist_FH"):
        assert torch.equal(getattr(one.stats, name), getattr(four.stats, name))
    assert torch.equal(one.top.value_FN.sort(dim=1).values, four.top.value_FN.sort(dim=1).values)


def test_reservoir_is_a_uniform_sample_of_the_firings():
    """Feature 0 fires once in each of 40 contexts; with a reservoir of 8 every firing must be kept
    with probability 8/40 whatever its position in the stream."""
    hits = np.zeros(40)
    trials = 300
    for seed in range(trials):
        acc = FeatureAccumulator(1, AnalysisConfig(reservoir=8, top_n=1, seed=seed, window_before=0, window_after=0))
        for chunk in range(5):
            acts = torch.zeros(8 * 4, 1)
            acts[torch.arange(8) * 4 + 1] = 1.0 + torch.arange(8.0)[:, None] / 100  # any values
            acc.update(acts, torch.zeros(8, 4, dtype=torch.long))
        hits[acc.reservoir.context_FN[0].numpy()] += 1
    assert hits.sum() == 8 * trials
    freq = hits / trials  # expected 0.2 each; binomial sd 0.023
    assert np.all(np.abs(freq - 0.2) < 0.1) and abs(freq[:20].mean() - freq[20:].mean()) < 0.04


def test_memory_does_not_grow_with_tokens():
    settings = AnalysisConfig(top_n=5, reservoir=10)
    acts, tokens, keeps = synthetic(12, seed=2)
    acc = FeatureAccumulator(F, settings)
    acc.update(acts[0], tokens[0], keeps[0])
    size = acc.nbytes()
    for a, t, k in zip(acts[1:], tokens[1:], keeps[1:]):
        acc.update(a, t, k)
    assert acc.nbytes() == size
    width = settings.window_before + 1 + settings.window_after
    per_example = 4 + 4 + 8 + 4 + width * (2 + 4)  # key, value, context, position, window acts + ids
    assert size == F * (settings.top_n + settings.reservoir) * per_example + F * (acc.bins.n * 8 + 8 + 8 + 4 + 4)


def test_log_bins_put_edge_values_in_the_bin_above():
    bins = LogBins(1e-4, 1e4, 32)
    assert bins.n == 8 * 32 + 2 and bins.edges[0] == 0 and bins.edges[-1] == np.inf
    values = torch.tensor(np.concatenate([bins.edges[1:-1], [1e-9, 5e-5, 3.0, 2e4, 1e30]]))
    expected = np.searchsorted(bins.edges, values.numpy(), side="right") - 1
    assert np.array_equal(bins.index(values).numpy(), expected)
    assert np.array_equal(bins.index(values.float()).numpy(), np.searchsorted(bins.edges, values.float().double().numpy(), side="right") - 1)


@pytest.mark.parametrize("n_bands", [1, 3, 10])
def test_quantile_bands_are_contiguous_nonempty_and_balanced(n_bands):
    rng = np.random.default_rng(n_bands)
    counts = rng.integers(0, 50, 60) * (rng.random(60) < 0.7)
    counts[:5], counts[5] = 0, 3
    bands = quantile_bands(counts, n_bands)
    assert 1 <= len(bands) <= n_bands
    assert bands[0][0] == 5 and bands[-1][1] == np.flatnonzero(counts)[-1] + 1
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))  # contiguous
    sizes = [counts[a:b].sum() for a, b in bands]
    assert all(s > 0 for s in sizes) and sum(sizes) == counts.sum()
    if n_bands == 10:  # each band holds about a tenth (whole bins: at most one bin's worth more)
        assert max(sizes) <= counts.sum() / 10 + counts.max()
    edges = np.arange(61, dtype=float)
    ranges = band_ranges(bands, edges, 5.5, 58.2)
    assert ranges[0][0] == 5.5 and ranges[-1][1] == min(58.2, edges[bands[-1][1]])
    assert quantile_bands(np.zeros(8, dtype=int), 4) == []
