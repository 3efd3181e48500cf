"""Finding and tabulating finished runs: one row per SAE, the config keys that differ, final metrics.

A run is a folder holding ``metrics.json`` (``python -m saes.train``; one per SAE, so a sweep's
folder holds many) or ``evaluation.json`` (``python -m saes.evaluate``). Its config is the SAE's
own training config (``sae/cfg.json`` metadata, exact for each SAE of a multi-SAE run), else the
run folder's ``config.yaml``.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saes.errors import ConfigError
from saes.formatting import flatten, format_number

METRIC_FILES = ("metrics.json", "evaluation.json")
METRIC_KEYS = ["l0", "explained_variance", "mse", "dead_fraction", "delta_lm_loss", "ce_recovered", "kl"]
IGNORED_KEYS = {"resume", "layers_per_job", "device", "model.device", "logger.mode", "logger.kind"}
"""Config keys that never change an SAE; they are not shown as differences."""


@dataclass
class Run:
    """One SAE's final metrics and flattened config."""

    folder: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    name: str = ""
    label: str = ""
    """The values of the differing config keys, e.g. ``sae.k=16``; set by ``label_runs``."""
    diffs: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return str(self.config.get("sae.architecture") or self.metrics.get("setup", {}).get("architecture") or "?")


def find_runs(patterns: list[str]) -> list[Path]:
    """Run folders under each directory or glob in ``patterns`` (searched recursively), sorted."""
    found: set[Path] = set()
    for pattern in patterns:
        matches = [Path(p) for p in glob.glob(os.path.expanduser(pattern))] or [Path(pattern)]
        for path in matches:
            if path.is_file() and path.name in METRIC_FILES:
                found.add(path.parent)
            elif path.is_dir():
                for name in METRIC_FILES:
                    found.update(p.parent for p in path.rglob(name) if not _hidden(p.relative_to(path)))
    return sorted(found)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "wandb" for part in relative.parts[:-1])


def load_run(folder: Path) -> Run:
    """A run's metrics (``metrics.json`` preferred over ``evaluation.json``) and config."""
    metrics_file = next(folder / n for n in METRIC_FILES if (folder / n).exists())
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{metrics_file} is not valid JSON: {err}") from err
    sae_dir = Path(metrics.get("setup", {}).get("sae", folder / "sae"))
    config: dict[str, Any] = {}
    if (sae_dir / "cfg.json").exists():
        config = json.loads((sae_dir / "cfg.json").read_text()).get("metadata", {}).get("config") or {}
    if not config:
        for parent in (folder, folder.parent):
            if (parent / "config.yaml").exists():
                config = yaml.safe_load((parent / "config.yaml").read_text()) or {}
                break
    return Run(folder, metrics, flatten(config))


def load_runs(patterns: list[str]) -> list[Run]:
    """Every run under ``patterns``, named by its path below their common folder and labelled."""
    folders = find_runs(patterns)
    if not folders:
        raise ConfigError(f"no runs under {' '.join(patterns)}: expected folders holding metrics.json or evaluation.json")
    runs = [load_run(f) for f in folders]
    root = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    for run in runs:
        rel = run.folder.resolve().relative_to(root) if len(runs) > 1 else Path(run.folder.name)
        run.name = str(rel) if str(rel) != "." else run.folder.name
    label_runs(runs)
    return runs


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys that differ between runs holding them (ignoring ``IGNORED_KEYS``).

    A key only some runs have (an option of one SAE variant) counts when at least two runs have
    it with different values: comparing variants then shows the options they share and set
    differently, not every option of every variant (the variant has its own column)."""
    keys = sorted({k for r in runs for k in r.config} - IGNORED_KEYS - {"sae.architecture"})
    differing = []
    for key in keys:
        values = [json.dumps(r.config[key], sort_keys=True) for r in runs if key in r.config]
        if len(values) > 1 and len(set(values)) > 1:
            differing.append(key)
    return differing


def label_runs(runs: list[Run]) -> None:
    """Set each run's ``diffs`` and ``label`` from the keys that differ across ``runs``."""
    keys = differing_keys(runs)
    for run in runs:
        run.diffs = {k: run.config.get(k) for k in keys}
        run.label = " ".join(f"{_short(k)}={_value(v)}" for k, v in run.diffs.items()) or run.name


def _short(key: str) -> str:
    return key.removeprefix("sae.").removeprefix("training.")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _value(value)
    return format_number(value)


def format_table(runs: list[Run]) -> str:
    """A text table: run, variant, each differing config key, then the final metrics."""
    keys = differing_keys(runs)
    metric_keys = [k for k in METRIC_KEYS if any(k in r.metrics for r in runs)]
    header = ["run", "variant", *(_short(k) for k in keys), *metric_keys]
    rows = [[r.name, r.variant, *(_fmt(r.config.get(k)) for k in keys), *(_fmt(r.metrics.get(k)) for k in metric_keys)]
            for r in sorted(runs, key=lambda r: (r.variant, r.metrics.get("l0", 0), r.name))]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    text_cols = 2 + len(keys)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < text_cols else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
