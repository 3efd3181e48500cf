"""Typed schema of ``python -m saes.evaluate`` and its registration in Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from saes.config import CONF_DIR, DataConfig, ModelConfig, SiteConfig


@dataclass
class EvaluateConfig:
    """``python -m saes.evaluate sae=<folder>``: held-out metrics of one SAE.

    ``model``, ``data`` and ``site`` come from the SAE's own metadata (the training config for
    SAEs trained by saes; ``model_name``/``hook_name``/``context_size`` for SAELens checkpoints).
    Selecting a group (``model=gpt2``, ``data=pydocs``, ``site=mlp_out``) replaces that part;
    setting a key (``data.holdout_tokens=8192``, ``site.hook_in=blocks.5.hook_resid_pre``)
    changes only that key.
    """

    sae: str = MISSING
    """SAE folder (``cfg.json`` + weights) or a training run folder holding ``sae/``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
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


EVALUATE_GROUPS = ("model", "data", "site")


def register_evaluate_configs() -> None:
    """Register ``conf/evaluate.yaml``, its schema and the model/data/site options in ConfigStore
    (``saes.evaluate`` reads its config from there, where ``sae`` is not a config group)."""
    store = ConfigStore.instance()
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="evaluate", node=OmegaConf.load(CONF_DIR / "evaluate.yaml"))
    for group in EVALUATE_GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            store.store(group=group, name=path.stem, node=OmegaConf.load(path))
