"""Per-feature slots that keep the N largest keys seen so far, with the example behind each key.

Used twice: top activations (key = activation) and a uniform reservoir of firings (key = a random
number: the N largest of i.i.d. random keys are a uniform sample without replacement). Memory is
``F x N`` examples whatever the number of tokens. Slots do not move once written; a chunk's
candidates are first filtered by each feature's current N-th key (so after warm-up almost none
pass), cut to their N best per feature, and merged with one small top-k over ``[A, N + C]``
(A features touched, C <= N candidates each). Only winners have their window gathered.

Shapes: F features, N slots, W = window width, M candidates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

EMPTY = -1.0  # key of an unused slot (real keys are >= 0)
_PAD = -2.0  # key of candidate padding: never beats an unused slot


class Slots:
    """The N largest (key >= 0) examples per feature: key, activation value, context, position and
    the window of activations/token ids around the position."""

    def __init__(self, n_features: int, n: int, width: int, device: torch.device | str = "cpu"):
        self.n = n
        self.key_FN = torch.full((n_features, n), EMPTY, dtype=torch.float32, device=device)
        self.value_FN = torch.zeros(n_features, n, dtype=torch.float32, device=device)
        self.context_FN = torch.full((n_features, n), -1, dtype=torch.int64, device=device)
        self.position_FN = torch.full((n_features, n), -1, dtype=torch.int32, device=device)
        self.acts_FNW = torch.zeros(n_features, n, width, dtype=torch.float16, device=device)
        self.tokens_FNW = torch.full((n_features, n, width), -1, dtype=torch.int32, device=device)

    def offer(
        self,
        feature_M: torch.Tensor,
        key_M: torch.Tensor,
        value_M: torch.Tensor,
        row_M: torch.Tensor,
        window: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> int:
        """Merge candidates (feature, key >= 0, value, row of the chunk) into the slots.

        ``window(row_K, feature_K)`` returns ``(context_K, position_K, acts_KW, tokens_KW)`` for the
        winners only. Returns the number of slots written.
        """
        threshold_F = self.key_FN.min(dim=1).values
        ids_M = (key_M > threshold_F[feature_M]).nonzero().squeeze(1)
        if ids_M.numel() == 0:
            return 0
        feature_M, key_M = feature_M[ids_M], key_M[ids_M]

        # Sort by (feature asc, key desc) with one int64 key (non-negative float32 bits are monotonic);
        # numpy's sort: torch's multi-threaded int64 sort is far slower on small CPUs.
        bits = key_M.contiguous().view(torch.int32).to(torch.int64)
        composite = (feature_M << 32) + (0x7FFFFFFF - bits)
        order = torch.from_numpy(np.argsort(composite.cpu().numpy(), kind="stable")).to(feature_M.device)
        feature_M, key_M, ids_M = feature_M[order], key_M[order], ids_M[order]
        touched_A, count_A = torch.unique_consecutive(feature_M, return_counts=True)
        first_A = torch.cumsum(count_A, 0) - count_A
        group_M = torch.repeat_interleave(torch.arange(touched_A.numel(), device=feature_M.device), count_A)
        rank_M = torch.arange(feature_M.numel(), device=feature_M.device) - first_A[group_M]
        best = (rank_M < self.n).nonzero().squeeze(1)
        group_M, rank_M, key_M, ids_M = group_M[best], rank_M[best], key_M[best], ids_M[best]

        n_cand = int(count_A.max().clamp(max=self.n))
        cand_key_AC = torch.full((touched_A.numel(), n_cand), _PAD, dtype=torch.float32, device=key_M.device)
        cand_key_AC[group_M, rank_M] = key_M
        merged = torch.cat([self.key_FN[touched_A], cand_key_AC], dim=1)
        win_AN = merged.topk(self.n, dim=1, sorted=False).indices
        kept_AX = torch.zeros(merged.shape, dtype=torch.bool, device=key_M.device)
        kept_AX.scatter_(1, win_AN, True)
        # Pair each feature's freed slots with its winning candidates (both in row-major order, and a
        # feature frees exactly as many slots as it gains candidates).
        freed_a, freed_s = (~kept_AX[:, : self.n]).nonzero(as_tuple=True)
        new_a, new_c = kept_AX[:, self.n :].nonzero(as_tuple=True)
        if new_a.numel() == 0:
            return 0
        # Candidates of group a sit at positions first_kept[a] + c of the filtered arrays.
        kept_first_A = torch.cumsum(count_A.clamp(max=self.n), 0) - count_A.clamp(max=self.n)
        win = kept_first_A[new_a] + new_c
        f, s, ids = touched_A[freed_a], freed_s, ids_M[win]
        self.key_FN[f, s] = key_M[win]
        self.value_FN[f, s] = value_M[ids]
        context_K, position_K, acts_KW, tokens_KW = window(row_M[ids], f)
        self.context_FN[f, s] = context_K
        self.position_FN[f, s] = position_K.to(torch.int32)
        self.acts_FNW[f, s] = acts_KW.to(torch.float16)
        self.tokens_FNW[f, s] = tokens_KW.to(torch.int32)
        return int(win.numel())

    def nbytes(self) -> int:
        """Memory held by the slots."""
        return sum(t.element_size() * t.numel() for t in vars(self).values() if isinstance(t, torch.Tensor))
