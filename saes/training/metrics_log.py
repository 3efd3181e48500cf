"""Metrics sinks: ``metrics.jsonl`` in the run folder, always; W&B when ``logger.kind=wandb``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any



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
    """Appends one JSON object per log call to ``metrics.jsonl`` and mirrors it to W&B.

    On resume (``resume_step`` given), records logged after the checkpoint's step are dropped
    from ``metrics.jsonl`` (they will be logged again) and the same W&B run is continued.
    """

    def __init__(self, run_dir: Path, logger_cfg: Any, run_name: str, config: dict[str, Any], *,
                 group: str | None = None, tags: list[str] | None = None, wandb_id: str | None = None,
                 resume_step: int | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a", encoding="utf-8")
        self.wandb_run = None
        if logger_cfg.kind == "wandb":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                name=run_name,
                group=group,
                tags=tags,
                config=config,
                dir=str(run_dir),
                mode=wandb_mode(logger_cfg.mode),
                id=wandb_id,
                resume="allow" if wandb_id else None,
                reinit="create_new",
            )

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, record: dict[str, Any], step: int) -> None:
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: _to_wandb(v) for k, v in record.items()}, step=step)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        self.file.close()
        if self.wandb_run is not None:
            if summary:
                self.wandb_run.summary.update(summary)
            self.wandb_run.finish()


def _to_wandb(value: Any) -> Any:
    """A ``{"bin_edges", "counts"}`` histogram becomes a W&B histogram; anything else is unchanged."""
    if isinstance(value, dict) and {"bin_edges", "counts"} <= value.keys():
        import wandb

        return wandb.Histogram(np_histogram=(value["counts"], value["bin_edges"]))
    return value
