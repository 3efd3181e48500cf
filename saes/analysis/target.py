"""What an analysis reads: the SAE folder, and the model, hooks and data from its metadata (with
the config's overrides), plus a stable dictionary id. Nothing heavy is loaded here."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.activations import hook_layer
from saes.errors import ConfigError
from saes.sae.formats import CFG_FILE, read_cfg

SAE_DIR = "sae"


@dataclass
class Target:
    """The SAE to analyze and where its activations come from."""

    sae_dir: Path
    """Folder holding ``cfg.json`` and the weights."""
    run_dir: Path
    """The training run folder (``sae_dir``'s parent for a ``sae/`` folder), where ``metrics.json`` is."""
    sae_cfg: dict[str, Any]
    """The parsed ``cfg.json``."""
    model: DictConfig
    """Model settings (keys of :class:`saes.config.ModelConfig`)."""
    data: DictConfig
    """Dataset settings (keys of :class:`saes.config.DataConfig`)."""
    hook_in: str
    hook_out: str
    dictionary_id: str

    @property
    def metadata(self) -> dict[str, Any]:
        return self.sae_cfg.get("metadata", {})


def find_sae_dir(path: str) -> Path:
    """The folder with ``cfg.json`` for ``sae=<path>`` (a run folder or its ``sae/``)."""
    folder = Path(str(path)).expanduser()
    if not folder.exists():
        raise ConfigError(f"sae={path}: no such folder; pass a training run folder "
                          f"(e.g. outputs/train/smollm2-135m_topk/default) or its sae/ folder")
    if (folder / CFG_FILE).is_file():
        return folder
    if (folder / SAE_DIR / CFG_FILE).is_file():
        return folder / SAE_DIR
    raise ConfigError(f"sae={path}: neither {folder / CFG_FILE} nor {folder / SAE_DIR / CFG_FILE} exists; "
                      "pass a training run folder or an SAE folder in SAELens format")


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
    choices; a chosen ``model``/``data`` group replaces the SAE's setting as a whole, single keys
    (``data.context_size=64``) override one setting each."""
    choices = choices or {}
    sae_dir = find_sae_dir(cfg.sae_path)
    sae_cfg = read_cfg(sae_dir)
    meta = sae_cfg.get("metadata", {})
    trained = meta.get("config") or {}

    base_model = trained.get("model") or {
        "name": Path(str(meta.get("model_name", "model"))).name, "source": meta.get("model_name"), "bos_token": None,
    }  # fmt: skip
    model = _merge(base_model, cfg.model, replace=choices.get("model") is not None)
    if not model.get("source"):
        raise ConfigError("the SAE's metadata names no model: set model.source=<hub id or folder> (or model=<group>)")
    model["device"], model["dtype"] = cfg.model.device, cfg.model.dtype

    base_data = trained.get("data")
    if base_data is None and choices.get("data") is None:
        raise ConfigError("the SAE's metadata has no dataset config (not trained by saes): choose one with "
                          "data=<pydocs|fineweb_edu|pile_uncopyrighted|hub|files>")
    data = _merge(base_data or {}, cfg.data, replace=choices.get("data") is not None)
    if meta.get("context_size") and cfg.data.context_size is None and choices.get("data") is None:
        data["context_size"] = int(meta["context_size"])
    if "exclude_special" not in data or data["exclude_special"] is None:
        data["exclude_special"] = bool(meta.get("exclude_special_tokens", True))

    hook_in = cfg.site.hook_in or meta.get("hook_name")
    if not hook_in:
        raise ConfigError("the SAE's metadata names no hook: set site.hook_in=<TransformerLens hook name>")
    if isinstance(hook_in, (list, tuple)) or OmegaConf.is_list(hook_in):
        raise ConfigError(f"site.hook_in={hook_in}: an analysis reads one hook; give a single name")
    layer = trained.get("layer", hook_layer(str(meta.get("hook_name", ""))))
    hook_in = _format_layer(str(hook_in), layer)
    hook_out = cfg.site.hook_out or (meta.get("hook_name_out") if not cfg.site.hook_in else None) or hook_in
    hook_out = _format_layer(str(hook_out), layer)
    return Target(
        sae_dir=sae_dir,
        run_dir=sae_dir.parent if sae_dir.name == SAE_DIR else sae_dir,
        sae_cfg=sae_cfg,
        model=OmegaConf.create(model),
        data=OmegaConf.create(data),
        hook_in=hook_in,
        hook_out=hook_out,
        dictionary_id=cfg.dictionary_id or derive_dictionary_id(sae_dir),
    )


def run_metrics(target: Target) -> dict[str, Any]:
    """The run's final metrics (``metrics.json``, numbers only), or {} when there is none."""
    path = target.run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _merge(base: Mapping[str, Any], overrides: DictConfig, replace: bool) -> dict[str, Any]:
    """``overrides`` on top of ``base`` (all of them when a group was chosen, else the non-None ones)."""
    over = OmegaConf.to_container(overrides, resolve=True)
    assert isinstance(over, dict)
    over = {k: v for k, v in over.items() if k not in ("device", "dtype")}
    if replace:
        return dict(over)
    merged = dict(base)
    merged.update({k: v for k, v in over.items() if v is not None})
    return merged


def _format_layer(hook: str, layer: Any) -> str:
    if "{layer}" not in hook:
        return hook
    if layer is None:
        raise ConfigError(f"site.hook_in={hook!r} needs a layer, and the SAE's metadata has none: give the full hook name")
    return hook.format(layer=layer)
