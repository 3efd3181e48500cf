"""What an analysis reads: the SAE, with model, hooks and data resolved from its metadata and the
config's overrides (:mod:`saes.resolve`), plus a stable dictionary id. Nothing heavy is loaded here."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.resolve import SAE_DIR, ResolvedSAE, resolve_config


@dataclass
class Target(ResolvedSAE):
    """The SAE to analyze and where its activations come from; ``model`` also holds the
    ``device`` and ``dtype`` the model runs with."""

    dictionary_id: str = ""
    """The SAE's id in the database."""


def derive_dictionary_id(sae_dir: Path) -> str:
    """A stable, readable id: the run folder's path below ``outputs/train`` (or its name), joined by
    ``:``, plus 6 hex digits of the SAE folder's absolute path, e.g. ``smollm2-135m_topk:default-3f9a1c``.
    The same folder always gets the same id (so re-analyzing replaces); two checkouts never share one."""
    sae_dir = sae_dir.resolve()
    run_dir = sae_dir.parent if sae_dir.name == SAE_DIR else sae_dir
    parts = run_dir.parts
    if "outputs" in parts[:-1]:
        rel = list(parts[len(parts) - parts[::-1].index("outputs") :])
        if len(rel) > 1 and rel[0] in ("train", "multirun"):
            rel = rel[1:]
    else:
        rel = [run_dir.name]
    readable = re.sub(r"[^A-Za-z0-9=,._+:-]", "_", ":".join(rel))
    return f"{readable}-{hashlib.sha1(str(sae_dir).encode()).hexdigest()[:6]}"


def resolve_target(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> Target:
    """The :class:`Target` of ``cfg`` (an ``analyze.yaml`` config). ``choices``: Hydra's group
    choices; a chosen ``model``/``data``/``site`` group replaces the SAE's setting as a whole,
    single keys (``data.context_size=64``) override one setting each."""
    sae = resolve_config(cfg, choices)
    resolved = {f.name: getattr(sae, f.name) for f in fields(sae)}
    resolved["model"] = OmegaConf.merge(sae.model, {"device": cfg.model.device, "dtype": cfg.model.dtype})
    return Target(**resolved, dictionary_id=cfg.dictionary_id or derive_dictionary_id(sae.sae_dir))


def run_metrics(target: ResolvedSAE) -> dict[str, Any]:
    """The run's final metrics (``metrics.json``, numbers only), or {} when there is none."""
    path = target.run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
