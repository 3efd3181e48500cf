"""Typed schema of ``python -m saes.analyze`` (``conf/analyze.yaml``, group ``conf/analysis/``).

Model, data and site default to what the SAE was trained with (its ``cfg.json`` metadata). The
``model``, ``data`` and ``site`` keys here only override: every key defaults to None (= keep the
SAE's value), and choosing a group (``data=fineweb_edu``) replaces the SAE's choice as a whole
(the same schema and rules as ``python -m saes.evaluate``: :mod:`saes.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from saes.errors import ConfigError
from saes.resolve import DataOverride, ModelOverride, SiteOverride


@dataclass
class AnalysisConfig:
    """What the analysis computes for every feature, and on how many tokens."""

    tokens: int = 131_072
    """Token budget: positions run through the model (whole contexts of ``data.context_size``;
    special-token positions are forwarded but not analyzed when ``data.exclude_special``)."""
    batch_contexts: int = 32
    """Contexts per model forward."""
    top_n: int = 20
    """Top-activating examples kept per feature."""
    window_before: int = 16
    """Tokens shown before the firing token of every example."""
    window_after: int = 8
    """Tokens shown after the firing token of every example."""
    bands: int = 10
    """Activation quantile bands per feature (fewer when its firings span few histogram bins)."""
    samples_per_band: int = 5
    """Examples shown per quantile band."""
    random_samples: int = 5
    """Uniformly random firing examples per feature."""
    reservoir: int = 100
    """Firings kept per feature as a uniform random sample (reservoir); the band and random
    examples are drawn from it. Must be at least ``random_samples`` and ``samples_per_band``."""
    hist_min: float = 1e-4
    """Lowest edge of the log-spaced activation histogram (smaller firings go to one underflow bin)."""
    hist_max: float = 1e4
    """Highest edge of the activation histogram (larger firings go to one overflow bin)."""
    hist_bins_per_decade: int = 32
    """Histogram resolution: bins per factor of 10 (quantile-band edges are histogram edges)."""
    logit_effects: int = 10
    """Top and bottom logit effects stored per feature (0: none)."""
    neighbours: int = 10
    """Nearest features by decoder cosine similarity stored per feature (0: none)."""
    seed: int = 0
    """Seed of the reservoir sampling."""


@dataclass
class AnalyzeConfig:
    """``python -m saes.analyze sae=<path>``: per-feature statistics and examples into MongoDB."""

    sae_path: str = MISSING
    """The SAE: a training run folder or its ``sae/`` folder (or any SAELens-format folder); given
    as ``sae=<path>`` on the command line (``conf/sae/`` is a training group)."""
    analysis: AnalysisConfig = MISSING
    model: ModelOverride = field(default_factory=ModelOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's model (``model=<group>`` or ``model.<key>=``)."""
    data: DataOverride = field(default_factory=DataOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's dataset (``data=<group>`` or ``data.<key>=``)."""
    site: SiteOverride = field(default_factory=SiteOverride)  # type: ignore[valid-type]
    """Overrides of the SAE's hooks (``site=<group>`` or ``site.hook_in=``)."""
    layer: Optional[int] = None
    """Replaces ``{layer}`` in ``site.hook_in``; None: the SAE's own layer."""
    dictionary_id: Optional[str] = None
    """The SAE's id in the database; None derives a stable one from its folder (see
    :func:`saes.analysis.target.derive_dictionary_id`). Re-analyzing the same id replaces it."""
    mongo_uri: Optional[str] = None
    """MongoDB URI; None: ``$MONGO_URI``, else a local server started on demand."""
    mongo_db: Optional[str] = None
    """Database name; None: ``$SAES_MONGO_DB``, else ``saes``."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N``."""
    dtype: str = "float32"
    """Model dtype: ``float32``, ``bfloat16`` or ``float16`` (the SAE always runs in float32)."""


def validate_analysis(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the ``analysis.*`` key whose value cannot work."""
    positive = ("tokens", "batch_contexts", "top_n", "bands", "samples_per_band", "reservoir", "hist_bins_per_decade")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"analysis.{key}={getattr(cfg, key)} must be at least 1")
    for key in ("window_before", "window_after", "random_samples", "logit_effects", "neighbours"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"analysis.{key}={getattr(cfg, key)} must be >= 0")
    for key in ("random_samples", "samples_per_band"):
        if getattr(cfg, key) > cfg.reservoir:
            raise ConfigError(f"analysis.{key}={getattr(cfg, key)} exceeds analysis.reservoir={cfg.reservoir}; "
                              f"raise analysis.reservoir or lower analysis.{key}")
    if not 0 < cfg.hist_min < cfg.hist_max:
        raise ConfigError(f"analysis.hist_min={cfg.hist_min} and analysis.hist_max={cfg.hist_max} must satisfy "
                          "0 < hist_min < hist_max")


def register_analyze_configs() -> None:
    """Register the schema ``conf/analyze.yaml`` lists first."""
    ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)
