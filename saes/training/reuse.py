"""A run folder is reused (resumed, or reported finished) only by the config that made it.

Folder names come from the command's overrides, so a changed YAML default, or two overrides that
map to one name, would otherwise resume the wrong run or return stale results. The folder's
``config.yaml`` is compared with the requested config on every key that changes the trained SAE
(``RESULT_NEUTRAL`` lists those that do not: where it runs, how it logs, how often it saves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.errors import ConfigError
from saes.formatting import flatten

RESULT_NEUTRAL = ("resume", "device", "model.device", "logger", "layers_per_job", "launcher", "distributed.timeout_s",
                  "distributed.backend", "training.checkpoint_every", "training.save_every", "training.eval_every",
                  "activations.prefetch_tokens")
"""Keys (and key prefixes) a resumed run may change."""


def _relevant(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(config).items()
            if not any(k == n or k.startswith(n + ".") for n in RESULT_NEUTRAL)}


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """Fail, naming what differs, when ``run_dir`` holds a run of another config."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = _relevant(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
    wanted = _relevant(OmegaConf.to_container(cfg, resolve=True))
    differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise ConfigError(f"{run_dir} holds a run of another config ({shown}{more}): resume=false trains this config "
                          "there from scratch, or set hydra.run.dir to another folder")
