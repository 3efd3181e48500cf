"""Metrics sinks: ``metrics.jsonl`` in the run folder, always; W&B when ``logger.kind=wandb``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saes.errors import ConfigError


def wandb_mode(mode: str) -> str:
    """``auto`` -> ``online`` when an API key is configured, else ``offline``."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class MetricsLog:
    """Appends one JSON object per log call to ``metrics.jsonl`` and mirrors it to W&B."""

    def __init__(self, run_dir: Path, logger_cfg: Any, run_name: str, config: dict[str, Any]):
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a", encoding="utf-8")
        self.wandb_run = None
        if logger_cfg.kind == "wandb":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                name=run_name,
                config=config,
                dir=str(run_dir),
                mode=wandb_mode(logger_cfg.mode),
            )
        elif logger_cfg.kind != "none":
            raise ConfigError(f"logger.kind={logger_cfg.kind!r} is unknown; use logger=wandb or logger=none")

    def log(self, record: dict[str, Any], step: int) -> None:
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(record, step=step)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        self.file.close()
        if self.wandb_run is not None:
            if summary:
                self.wandb_run.summary.update(summary)
            self.wandb_run.finish()
