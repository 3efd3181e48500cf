"""Resumable training state: one file, written atomically (never half-written).

``<run>/checkpoint/state.pt`` holds every SAE's trainer state (weights, Adam moments, step, token
count, normalization, dead-latent counters), the activation stream (data position, shuffle
buffer contents and RNG) and the W&B run ids. It is deleted when the run finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.atomic import atomic_write

STATE_FILE = Path("checkpoint") / "state.pt"


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint/state.pt`` atomically."""
    return atomic_write(run_dir / STATE_FILE, lambda f: torch.save(state, f))


def load_state(run_dir: Path) -> dict[str, Any] | None:
    """The saved state, or None when the run has no checkpoint."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_state(run_dir: Path) -> None:
    """Drop the resume state of a finished run (it can be large: the shuffle buffer)."""
    path = run_dir / STATE_FILE
    if path.exists():
        path.unlink()
    if path.parent.exists() and not any(path.parent.iterdir()):
        path.parent.rmdir()
