"""Streaming analysis state of one SAE: every chunk of contexts updates it, memory O(F x samples).

A chunk is C contexts of T tokens: ``tokens_CT`` and the SAE's dense activations ``acts_RF``
(R = C*T rows, row = c*T + t). Its firings (activations > 0) update the running statistics
(:mod:`~saes.analysis.stats`), the top-activation slots and a uniform reservoir of firings
(:mod:`~saes.analysis.slots`); a winner's window of activations and token ids is copied at
selection time, so no second pass over the data is needed.
"""

from __future__ import annotations

import torch

from saes.analysis.config import AnalysisConfig
from saes.analysis.slots import Slots
from saes.analysis.stats import LogBins, RunningStats


class FeatureAccumulator:
    """Per-feature statistics, top examples and a firing reservoir, updated chunk by chunk."""

    def __init__(self, d_sae: int, settings: AnalysisConfig, device: torch.device | str = "cpu"):
        self.d_sae = d_sae
        self.before, self.after = settings.window_before, settings.window_after
        width = self.before + 1 + self.after
        self.bins = LogBins(settings.hist_min, settings.hist_max, settings.hist_bins_per_decade)
        self.stats = RunningStats(d_sae, self.bins, device)
        self.top = Slots(d_sae, settings.top_n, width, device)
        self.reservoir = Slots(d_sae, settings.reservoir, width, device)
        self.generator = torch.Generator(device).manual_seed(settings.seed)
        self.contexts = 0
        """Contexts seen so far (a context's index in the stream identifies it in the examples)."""
        self.positions = 0
        """Token positions seen, excluded ones included."""
        self.rows = 0
        """Analyzed positions (the density denominator): positions not excluded."""

    @torch.no_grad()
    def update(self, acts_RF: torch.Tensor, tokens_CT: torch.Tensor, keep_CT: torch.Tensor | None = None) -> None:
        """Add one chunk. ``acts_RF`` is modified in place: rows of excluded positions are zeroed."""
        n_ctx, ctx_len = tokens_CT.shape
        if acts_RF.shape != (n_ctx * ctx_len, self.d_sae):
            raise ValueError(f"acts_RF has shape {tuple(acts_RF.shape)}, expected {(n_ctx * ctx_len, self.d_sae)}")
        if keep_CT is not None and not bool(keep_CT.all()):
            acts_RF[~keep_CT.reshape(-1)] = 0
        first = self.contexts
        flat = acts_RF.view(-1)
        idx_M = flat.view(torch.int32).nonzero().squeeze(1)  # int view: faster, same zeros (+0.0)
        value_M = flat[idx_M]
        firing = value_M > 0
        if not bool(firing.all()):
            idx_M, value_M = idx_M[firing], value_M[firing]
        row_M = idx_M // self.d_sae
        feature_M = idx_M - row_M * self.d_sae

        acts_flat, tokens_flat = acts_RF.view(-1), tokens_CT.reshape(-1)
        offsets_W = torch.arange(-self.before, self.after + 1, device=acts_RF.device)

        def window(row_K: torch.Tensor, feature_K: torch.Tensor):
            ctx_K = row_K // ctx_len
            pos_K = row_K - ctx_K * ctx_len
            pos_KW = pos_K[:, None] + offsets_W
            outside_KW = (pos_KW < 0) | (pos_KW >= ctx_len)
            rows_KW = (ctx_K * ctx_len)[:, None] + pos_KW.clamp_(0, ctx_len - 1)
            acts_KW = acts_flat.take(rows_KW * self.d_sae + feature_K[:, None]).masked_fill_(outside_KW, 0)
            tokens_KW = tokens_flat.take(rows_KW).masked_fill_(outside_KW, -1)
            return ctx_K + first, pos_K, acts_KW, tokens_KW

        self.stats.update(feature_M, value_M)
        self.top.offer(feature_M, value_M, value_M, row_M, window)
        keys_M = torch.rand(value_M.shape, generator=self.generator, device=value_M.device)
        self.reservoir.offer(feature_M, keys_M, value_M, row_M, window)
        self.contexts += n_ctx
        self.positions += n_ctx * ctx_len
        self.rows += int(keep_CT.sum()) if keep_CT is not None else n_ctx * ctx_len

    def to_cpu(self) -> None:
        """Move the state to the CPU (documents are built there)."""
        for holder in (self.stats, self.top, self.reservoir):
            for name, value in vars(holder).items():
                if isinstance(value, torch.Tensor):
                    setattr(holder, name, value.cpu())

    def nbytes(self) -> int:
        """Memory of the state (independent of the number of tokens)."""
        stats = sum(t.element_size() * t.numel() for t in vars(self.stats).values() if isinstance(t, torch.Tensor))
        return stats + self.top.nbytes() + self.reservoir.nbytes()
