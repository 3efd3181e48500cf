"""Reading checkpoint files with errors that name the file (shared by every format's loader)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saes.errors import ConfigError
from saes.sae.base import SAE


class CheckpointError(ConfigError):
    """A checkpoint folder is missing, corrupt or of an unknown kind; the message names the file."""


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file raises
    ``CheckpointError`` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path} could not be read (missing, truncated or corrupt): {err}") from err


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; missing or invalid raises ``CheckpointError`` naming it."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def assign_tensors(sae: SAE, tensors: dict[str, torch.Tensor], path: Path) -> SAE:
    """``sae`` in the file's dtype with its SAELens-named tensors set; errors name ``path``."""
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    sae = sae.to(dtype)
    try:
        sae.load_saelens_tensors(tensors)
    except KeyError as err:
        raise CheckpointError(f"{path} lacks tensor {err}; it has {sorted(tensors)}") from err
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return sae
