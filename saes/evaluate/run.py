"""One evaluation of a saved SAE (``python -m saes.evaluate``).

The model, data and hook are rebuilt from the checkpoint's metadata: the full training config for
SAEs trained by saes (``metadata.config``), else SAELens's ``model_name``, ``hook_name`` and
``context_size``. The user's overrides go on top (see ``saes.config.EvaluateConfig``). Writes
``evaluation.json`` into the run folder and returns the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from saes.activations import hook_layer
from saes.config import CONF_DIR
from saes.errors import ConfigError

GROUPS = ("model", "data", "site")
REPORT_FILE = "evaluation.json"
MISSING_VALUE = "???"


@dataclass
class UserSettings:
    """What the command line set in one group: a selected option (the whole group) and/or keys."""

    option: dict[str, Any] | None
    keys: dict[str, Any]


@dataclass
class EvalSetup:
    """Everything an evaluation needs besides the SAE weights."""

    model: dict[str, Any]
    """``source``, ``bos_token``, ``name`` and (optionally) ``dtype``."""
    data: DictConfig
    """A complete, validated ``DataConfig``."""
    hook_in: str
    hook_out: str
    trained_by_saes: bool


def user_settings(cfg: DictConfig, overrides: list[str], choices: dict[str, Any]) -> dict[str, UserSettings]:
    """Per group, what the user set on the command line (Hydra's task overrides and group choices)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    out = {}
    for group in GROUPS:
        node = OmegaConf.to_container(cfg[group], resolve=False)
        option = None
        if choices.get(group):
            option = {k: v for k, v in node.items() if v != MISSING_VALUE and k not in ("device", "dtype")}
        dotted = {k.split(".", 1)[1]: node[k.split(".", 1)[1]] for k in keys if k.startswith(f"{group}.")}
        out[group] = UserSettings(option, dotted)
    return out


def sae_folder(path: str | Path) -> Path:
    """The checkpoint folder of ``sae=``: the folder itself, or a run folder's ``sae/``."""
    folder = Path(path).expanduser()
    if (folder / "cfg.json").exists():
        return folder
    if (folder / "sae" / "cfg.json").exists():
        return folder / "sae"
    inside = sorted(p.parent for p in folder.glob("*/sae/cfg.json"))
    if inside:
        listing = ", ".join(str(p) for p in inside[:8])
        raise ConfigError(f"sae={path} is a run folder with {len(inside)} SAEs; pass one of them: sae={listing}")
    raise ConfigError(f"sae={path}: no cfg.json there (nor in {folder / 'sae'}); pass an SAE folder or a training run folder")


def known_model(model_name: str) -> dict[str, Any]:
    """The ``conf/model`` option whose name or source matches a SAELens ``model_name``, else a
    config that loads ``model_name`` as a hub id or folder."""
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        option = yaml.safe_load(path.read_text())
        if model_name in (option.get("name"), option.get("source"), str(option.get("source", "")).split("/")[-1]):
            return option
    return {"name": model_name, "source": model_name, "bos_token": None}


def eval_setup(folder: Path, metadata: dict[str, Any], user: dict[str, UserSettings], layer: int | None) -> EvalSetup:
    """Model, data and hooks for evaluating the SAE in ``folder`` (see the module docstring)."""
    trained = metadata.get("config")
    if trained:
        base = {"model": trained["model"], "data": trained["data"], "site": trained["site"]}
        base_layer = trained.get("layer")
    else:
        name = metadata.get("model_name")
        base = {"model": known_model(name) if name else {}, "data": None,
                "site": {"hook_in": metadata.get("hook_name"), "hook_out": metadata.get("hook_name_out")}}
        base_layer = None

    model = {**base["model"], **(user["model"].option or {}), **user["model"].keys}
    if not model.get("source"):
        raise ConfigError(f"{folder / 'cfg.json'} names no model (metadata.model_name): pass model=<option> "
                          "(e.g. model=gpt2) or model.source=<hub id or local folder>")

    data = user["data"].option if user["data"].option is not None else base["data"]
    if data is None:
        raise ConfigError(f"{folder} was not trained by saes (cfg.json has no metadata.config), so its data is unknown: "
                          "pass data=<option> (pydocs, fineweb_edu, pile_uncopyrighted, hub data.path=<id>, files data.path=<glob>)")
    if not trained and metadata.get("context_size"):
        data = {**data, "context_size": metadata["context_size"]}  # the context length the SAE was trained on
    if not trained and isinstance(metadata.get("exclude_special_tokens"), bool):
        data = {**data, "exclude_special": metadata["exclude_special_tokens"]}
    data = {**data, **user["data"].keys}

    site = {**base["site"], **(user["site"].option or {}), **user["site"].keys}
    if (user["site"].option or "hook_in" in user["site"].keys) and "hook_out" not in {**(user["site"].option or {}), **user["site"].keys}:
        site["hook_out"] = None  # a new input hook: an SAE reconstructs that same hook
    template = site.get("hook_in")
    if not template or template == MISSING_VALUE:
        raise ConfigError(f"{folder / 'cfg.json'} names no hook (metadata.hook_name): pass site.hook_in=<hook>, "
                          "e.g. site.hook_in=blocks.3.hook_resid_post")
    layer = layer if layer is not None else base_layer if base_layer is not None else hook_layer(str(base["site"]["hook_in"] or ""))
    hook_in = _fill_layer(str(template), layer)
    hook_out = _fill_layer(str(site.get("hook_out") or template), layer)
    return EvalSetup(model, _validated_data(data), hook_in, hook_out, bool(trained))


def _fill_layer(hook: str, layer: int | None) -> str:
    if "{layer}" not in hook:
        return hook
    if layer is None:
        raise ConfigError(f"site.hook_in={hook!r} needs a layer: pass layer=<block index>")
    return hook.format(layer=layer)


def _validated_data(data: dict[str, Any]) -> DictConfig:
    from saes.config import DataConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), data)
        if OmegaConf.is_missing(merged, "source"):
            raise ConfigError("data.source is not set: pass data=<option>")
    except OmegaConfBaseException as err:
        raise ConfigError(f"data: {err}".splitlines()[0]) from None
    return merged


def run_evaluation(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``cfg.sae`` on held-out tokens; returns the report also written to evaluation.json."""
    import torch

    import saes
    from saes.activations import ModelForwards
    from saes.data import load_corpus
    from saes.evaluate.metrics import evaluate, position_summary
    from saes.evaluate.lm import LMEvaluator, Splice
    from saes.models import load_model, resolve_device
    from saes.sae.formats import load_metadata

    for key in ("eval_tokens", "batch_contexts"):
        if cfg[key] <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    folder = sae_folder(cfg.sae)
    setup = eval_setup(folder, load_metadata(folder), user_settings(cfg, overrides, choices), cfg.layer)
    device = resolve_device(cfg.device)
    sae = saes.load(folder, device=device).eval()
    model = load_model(setup.model["source"], device=device, dtype=cfg.dtype or setup.model.get("dtype") or "float32")
    corpus = load_corpus(setup.data, model.tokenizer, setup.model.get("bos_token"))
    excluded = corpus.special_ids() if setup.data.exclude_special else None
    source = ModelForwards(model, [setup.hook_in, setup.hook_out], excluded, device=device)

    contexts_NT = corpus.heldout_contexts(cfg.eval_tokens)
    parts = list(source.stream(iter(contexts_NT), cfg.batch_contexts))
    x_ND = torch.cat([p[setup.hook_in] for p in parts])
    y_ND = torch.cat([p[setup.hook_out] for p in parts])
    if (x_ND.shape[1], y_ND.shape[1]) != (sae.d_in, sae.d_out):
        raise ConfigError(f"the SAE takes d_in={sae.d_in} and returns d_out={sae.d_out}, but {setup.hook_in} / "
                          f"{setup.hook_out} have width {x_ND.shape[1]} / {y_ND.shape[1]}: check site.hook_in and model")
    lm = None
    if cfg.ce_tokens > 0:
        ce_contexts = contexts_NT[: max(1, cfg.ce_tokens // setup.data.context_size)]
        lm = LMEvaluator(model, ce_contexts, source.keep_mask, cfg.batch_contexts)([Splice(sae, setup.hook_in, setup.hook_out)])[0]
    metrics = evaluate(sae, x_ND, y_ND, lm)
    metrics.pop("log10_density")
    histogram = metrics.pop("density_histogram")
    excluded_tokens = model.tokenizer.convert_ids_to_tokens(excluded.tolist()) if excluded is not None else []
    report = {
        **metrics,
        "density_histogram": histogram,
        "positions": {**position_summary(contexts_NT, source.keep_mask, excluded_tokens), "contexts": contexts_NT.shape[0],
                      "context_size": setup.data.context_size},
        "setup": {
            "sae": str(folder),
            "architecture": sae.architecture,
            "d_sae": sae.d_sae,
            "model": setup.model["source"],
            "hook_in": setup.hook_in,
            "hook_out": setup.hook_out,
            "data": OmegaConf.to_container(setup.data, resolve=True),
            "metadata_source": "saes training config" if setup.trained_by_saes else "SAELens metadata + overrides",
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
