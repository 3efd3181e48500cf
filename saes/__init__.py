"""saes: train, evaluate and analyze sparse autoencoders on language-model activations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# CPU threads: OpenMP workers sleep as soon as they are idle instead of spinning. Where the cores
# are shared (other jobs, this process's own data work), spinning workers of every small parallel
# op wait on a descheduled sibling: measured on a shared 2-core machine, the SAE step ran 2.7x and
# the model forward 2x faster with PASSIVE. Takes effect only if torch is imported after saes (as
# in ``python -m saes.train`` and the benchmarks); an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from saes.sae.base import SAE


def load(path: str | Path, device: str = "cpu") -> "SAE":
    """Load an SAE from a checkpoint folder or a training run folder (its ``sae/``).

    >>> sae = saes.load("outputs/train/2026-11-25/12-00-00_smollm2-135m_topk_L3")
    >>> acts = sae.encode(x_BD); x_hat = sae.decode(acts)
    """
    from saes.sae.formats import CFG_FILE, load_sae

    folder = Path(path)
    if not (folder / CFG_FILE).exists() and (folder / "sae" / CFG_FILE).exists():
        folder = folder / "sae"
    return load_sae(folder, device=device)
