"""Typed schema of ``python -m saes.evaluate`` (``conf/evaluate.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from saes.resolve import DataOverride, ModelOverride, SiteOverride


@dataclass
class EvaluateConfig:
    """``python -m saes.evaluate sae=<folder>``: held-out metrics of one SAE.

    ``model``, ``data`` and ``site`` come from the SAE's own metadata (the training config for
    SAEs trained by saes; ``model_name``/``hook_name``/``context_size`` for SAELens checkpoints,
    which also need ``data=``). Selecting a group (``model=gpt2``, ``data=pydocs``,
    ``site=mlp_out``) replaces that part; setting a key (``data.holdout_tokens=8192``,
    ``site.hook_in=blocks.5.hook_resid_pre``) changes only that key (rules: ``saes.resolve``).
    """

    sae_path: str = MISSING
    """SAE folder (``cfg.json`` + weights) or a training run folder holding ``sae/``; given as
    ``sae=<path>`` on the command line (``conf/sae/`` is a training group)."""
    model: ModelOverride = field(default_factory=ModelOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's model (``model=<option>`` or ``model.<key>=``)."""
    data: DataOverride = field(default_factory=DataOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's dataset (``data=<option>`` or ``data.<key>=``)."""
    site: SiteOverride = field(default_factory=SiteOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's hooks (``site=<option>`` or ``site.hook_in=``)."""
    layer: Optional[int] = None
    """Replaces ``{layer}`` in ``site.hook_in``; None: the SAE's own layer."""
    eval_tokens: int = 50_000
    """Held-out tokens for reconstruction metrics (explained variance, MSE, L0, densities)."""
    ce_tokens: int = 8_192
    """Held-out tokens (the first of the same contexts) for the LM-loss metrics; 0 skips them."""
    batch_contexts: int = 8
    """Contexts per model forward."""
    device: str = "auto"
    """Where the model and SAE run: ``auto`` (cuda if available), ``cpu``, ``cuda:N``, ``mps``."""
    dtype: Optional[str] = None
    """Model dtype; None: the one the SAE was trained with (float32 for foreign SAEs)."""


def register_evaluate_configs() -> None:
    """Register the schema ``conf/evaluate.yaml`` lists first."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
