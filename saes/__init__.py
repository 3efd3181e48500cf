"""saes: train, evaluate and analyze sparse autoencoders on language-model activations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# CPU threads: OpenMP workers sleep as soon as they are idle instead of spinning. Where the cores
# are shared (other jobs, this process's own data work), spinning workers of every small parallel
# op wait on a descheduled sibling (measured: docs/performance.md). Takes effect only if torch is
# imported after saes (as in ``python -m saes.train`` and the benchmarks); an explicit
# OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from saes.sae.base import SAE


def load(path: str | Path, device: str = "cpu") -> "SAE":
    """Load an SAE from a checkpoint folder or a training run folder (its ``sae/``), found as
    ``sae=`` is (:func:`saes.resolve.find_sae_dir`).

    >>> sae = saes.load("outputs/train/2026-11-25/12-00-00_smollm2-135m_topk_L3")
    >>> acts = sae.encode(x_BD); x_hat = sae.decode(acts)
    """
    from saes.resolve import find_sae_dir
    from saes.sae.formats import load_sae

    return load_sae(find_sae_dir(path, missing_ok=True), device=device)
