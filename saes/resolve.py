"""Which SAE ``sae=`` names and what it runs on: one folder finder and one resolution of model,
data and hooks from an SAE's ``cfg.json`` metadata plus the user's overrides. Used by
``saes.load``, ``python -m saes.evaluate``, ``python -m saes.analyze`` and the server.

The rules, the same everywhere:

* The base is the SAE's metadata: the training config for SAEs trained by saes
  (``metadata.config``), else SAELens's ``model_name`` (matched to a ``conf/model`` option),
  ``hook_name``/``hook_name_out``, ``context_size`` and ``exclude_special_tokens``. Such foreign
  SAEs record no dataset, so they need ``data=<option>``.
* A chosen group (``model=gpt2``, ``data=pydocs``, ``site=mlp_out``) replaces that part as a
  whole; a key (``data.context_size=64``, ``site.hook_in=...``) changes only that key. A foreign
  SAE's ``context_size`` and ``exclude_special_tokens`` go on top of the chosen data group (it
  was trained with them), below the user's keys.
* A new ``hook_in`` without a ``hook_out`` means the SAE reconstructs that same hook.
* ``{layer}`` in a hook is filled from ``layer=``, else the SAE's own layer.

Nothing heavy is loaded here (no model, no weights; torch only once a folder is looked at).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from saes.config import CONF_DIR, DataConfig, ModelConfig, SiteConfig
from saes.errors import ConfigError

SAE_DIR = "sae"
"""A training run's checkpoint folder, inside the run folder."""
SAE_KEY = "sae_path"
"""The config key of ``sae=``: ``conf/sae/`` is the training group of SAE variants, so both
commands take ``sae=<path>`` on the command line and store it under this name (:func:`sae_argv`)."""
GROUPS = ("model", "data", "site")
COMMAND_KEYS = ("device", "dtype")
"""Model keys that each command sets itself (from its top-level ``device=`` and ``dtype=``)."""


def _overrides_of(cls: type, keep: tuple[str, ...] = ()) -> type:
    """``cls`` with every field Optional and None by default (= "keep the SAE's"), except ``keep``
    (Optional, with their defaults)."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, Optional[hints[f.name]],  # noqa: UP045 (OmegaConf reads these at runtime)
               field(default=f.default if f.name in keep else None)) for f in dataclasses.fields(cls)]  # fmt: skip
    return dataclasses.make_dataclass(f"{cls.__name__}Override", fields, namespace={"__module__": __name__})


ModelOverride = _overrides_of(ModelConfig, keep=COMMAND_KEYS)
"""Schema of the ``model`` keys of both commands; None keeps the SAE's model setting."""
DataOverride = _overrides_of(DataConfig)
"""Schema of the ``data`` keys of both commands; None keeps the SAE's dataset setting."""
SiteOverride = _overrides_of(SiteConfig)
"""Schema of the ``site`` keys of both commands; None keeps the SAE's hooks."""


@dataclass
class GroupOverride:
    """What the user set in one group (``model``, ``data`` or ``site``)."""

    option: dict[str, Any] | None = None
    """A chosen option's settings (``data=pydocs``): they replace the SAE's as a whole."""
    keys: dict[str, Any] = field(default_factory=dict)
    """Single keys (``data.context_size=64``), applied last: each changes only itself."""


@dataclass
class Overrides:
    """The user's overrides of an SAE's metadata."""

    model: GroupOverride = field(default_factory=GroupOverride)
    data: GroupOverride = field(default_factory=GroupOverride)
    site: GroupOverride = field(default_factory=GroupOverride)
    layer: int | None = None
    """Fills ``{layer}`` in the hooks; None: the SAE's own layer."""


@dataclass
class ResolvedSAE:
    """An SAE folder and what it runs on."""

    sae_dir: Path
    """Folder holding ``cfg.json`` and the weights."""
    run_dir: Path
    """The training run folder (``sae_dir``'s parent for a ``sae/`` folder), where ``metrics.json`` is."""
    sae_cfg: dict[str, Any]
    """The parsed ``cfg.json``."""
    model: DictConfig
    """Keys of :class:`saes.config.ModelConfig` but ``device``; ``dtype`` is the training dtype, if known."""
    data: DictConfig | None
    """A complete, validated :class:`saes.config.DataConfig` (None only when not needed and unknown)."""
    hook_in: str
    hook_out: str
    layer: int | None
    """The block the hooks are in (``layer=``, else the SAE's), None if unknown."""
    trained_by_saes: bool
    """Whether the metadata holds saes's training config (else it is a foreign checkpoint's)."""

    @property
    def metadata(self) -> dict[str, Any]:
        return self.sae_cfg.get("metadata") or {}


def sae_argv(argv: list[str]) -> list[str]:
    """The command line with ``sae=<path>`` as ``sae_path=<path>`` (see :data:`SAE_KEY`)."""
    return [f"{SAE_KEY}={a[4:]}" if a.startswith("sae=") else a for a in argv]


def find_sae_dir(path: str | Path | None, missing_ok: bool = False) -> Path:
    """The checkpoint folder that ``sae=<path>`` names: ``path`` itself when it holds ``cfg.json``
    (or lm-saes's ``config.json``), else a run folder's ``sae/``. A folder of several runs raises
    :class:`ConfigError` listing their SAEs; one without an SAE raises one saying what to pass,
    unless ``missing_ok`` (then ``path`` is returned, for the loader to say what is there). A
    folder caught mid-replacement is found as its complete stand-in (:mod:`saes.atomic`)."""
    from saes.atomic import readable_directory
    from saes.sae.foreign import LLAMASCOPIUM_CONFIG
    from saes.sae.formats import CFG_FILE

    if path is None or str(path) == MISSING:
        raise ConfigError("sae= is not set: pass sae=<training run folder or SAE folder>, "
                          "e.g. sae=outputs/train/smollm2-135m_topk/default")
    folder = Path(str(path)).expanduser()
    folder = readable_directory(folder) or folder
    if (folder / CFG_FILE).is_file() or (folder / LLAMASCOPIUM_CONFIG).is_file():
        return folder
    sae_dir = readable_directory(folder / SAE_DIR)
    if sae_dir is not None and (sae_dir / CFG_FILE).is_file():
        return sae_dir
    inside = sorted({p.parent for depth in (1, 2, 3) for p in folder.glob("*/" * depth + f"{SAE_DIR}/{CFG_FILE}")})
    if inside:
        listing = ", ".join(str(p) for p in inside[:8]) + (", ..." if len(inside) > 8 else "")
        raise ConfigError(f"sae={path} is a run folder with {len(inside)} SAEs; pass one of them: sae={listing}")
    if missing_ok:
        return folder
    if not folder.exists():
        raise ConfigError(f"sae={path}: no such folder; pass a training run folder "
                          "(e.g. outputs/train/smollm2-135m_topk/default) or its sae/ folder")
    raise ConfigError(f"sae={path}: neither {folder / CFG_FILE} nor {folder / SAE_DIR / CFG_FILE} exists; "
                      "pass a training run folder or an SAE folder in SAELens format")


def conf_option(group: str, name: str) -> dict[str, Any] | None:
    """The settings of ``conf/<group>/<name>.yaml``; None when there is no such file."""
    path = CONF_DIR / group / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else None


def known_model(model_name: str) -> dict[str, Any]:
    """The ``conf/model`` option whose name or source matches a SAELens ``model_name``, else a
    config that loads ``model_name`` as a hub id or folder."""
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        option = yaml.safe_load(path.read_text()) or {}
        if model_name in (option.get("name"), option.get("source"), str(option.get("source", "")).split("/")[-1]):
            return option
    return {"name": Path(model_name).name, "source": model_name, "bos_token": None}


def resolve_sae(path: str | Path | None, overrides: Overrides | None = None, need_data: bool = True) -> ResolvedSAE:
    """The SAE that ``sae=<path>`` names, with its model, data and hooks from its metadata and
    ``overrides`` (see the module docstring). ``need_data=False``: a foreign SAE without ``data=``
    gets ``data=None`` instead of an error."""
    from saes.activations.hooks import hook_layer
    from saes.atomic import stands_in_for
    from saes.sae.formats import CFG_FILE, read_cfg

    over = overrides or Overrides()
    sae_dir = find_sae_dir(path)
    sae_cfg = read_cfg(sae_dir)
    meta = sae_cfg.get("metadata") or {}
    trained = meta.get("config") or {}
    where = sae_dir / CFG_FILE

    name = meta.get("model_name")
    model = _apply(trained.get("model") or (known_model(str(name)) if name else {}), over.model, ModelConfig)
    model.pop("device", None)
    if not _is_set(model.get("source")):
        raise ConfigError(f"{where} names no model (metadata.model_name): pass model=<option> "
                          "(e.g. model=gpt2) or model.source=<hub id or local folder>")

    data = _resolve_data(meta, trained, over.data, need_data, where)

    base_site = trained.get("site") or {"hook_in": meta.get("hook_name"), "hook_out": meta.get("hook_name_out")}
    site = _apply(base_site, over.site, SiteConfig)
    given = {**(over.site.option or {}), **over.site.keys}
    if "hook_in" in given and not _is_set(given.get("hook_out")):
        site["hook_out"] = None  # a new input hook: the SAE reconstructs that same hook
    hook_in = site.get("hook_in")
    if not _is_set(hook_in):
        raise ConfigError(f"{where} names no hook (metadata.hook_name): pass site.hook_in=<hook>, "
                          "e.g. site.hook_in=blocks.3.hook_resid_post")
    if isinstance(hook_in, (list, tuple)) or OmegaConf.is_list(hook_in):
        raise ConfigError(f"site.hook_in={list(hook_in)}: an SAE reads one hook; give a single name")
    layer = over.layer
    if layer is None:
        own = trained.get("layer")
        layer = own if isinstance(own, int) else hook_layer(str(base_site.get("hook_in") or ""))
    return ResolvedSAE(
        sae_dir=sae_dir,
        run_dir=sae_dir.parent if stands_in_for(sae_dir) == SAE_DIR else sae_dir,
        sae_cfg=sae_cfg,
        model=OmegaConf.create(model),
        data=data,
        hook_in=_fill_layer("site.hook_in", str(hook_in), layer),
        hook_out=_fill_layer("site.hook_out", str(site.get("hook_out") or hook_in), layer),
        layer=layer,
        trained_by_saes=bool(trained),
    )


def user_overrides(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> Overrides:
    """The overrides in a composed ``evaluate.yaml``/``analyze.yaml`` config, whose ``model``,
    ``data`` and ``site`` keys are None unless set. ``choices``: Hydra's group choices; None: those
    Hydra recorded (``cfg.hydra`` or the running app's). A chosen group's settings are read from
    its YAML file; the user's keys are those the recorded command line names, else (a config
    composed without its ``hydra`` node) the set keys that the chosen YAML does not hold as set."""
    record = cfg.hydra if "hydra" in cfg else HydraConfig.get() if HydraConfig.initialized() else None
    if choices is None:
        choices = record.runtime.choices if record is not None else {}
    named = None
    if record is not None:
        named = {o.key_or_group for o in OverridesParser.create().parse_overrides(list(record.overrides.task))}
    groups = {}
    for group in GROUPS:
        node = OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True)
        assert isinstance(node, dict)
        set_keys = {k: v for k, v in node.items() if k not in COMMAND_KEYS and _is_set(v)}
        option = conf_option(group, str(choices[group])) if choices.get(group) else None
        if named is not None:
            keys = {k: v for k, v in set_keys.items() if f"{group}.{k}" in named}
        else:
            keys = {k: v for k, v in set_keys.items() if option is None or option.get(k, MISSING) != v}
        if option is not None:
            option = {k: v for k, v in option.items() if _is_set(v)}
        elif choices.get(group):  # an option from outside conf/: all that is set besides the keys
            option = {k: v for k, v in set_keys.items() if k not in keys}
        groups[group] = GroupOverride(option, keys)
    return Overrides(**groups, layer=cfg.get("layer"))


def resolve_config(cfg: DictConfig, choices: Mapping[str, Any] | None = None, need_data: bool = True) -> ResolvedSAE:
    """:func:`resolve_sae` of a composed ``evaluate.yaml``/``analyze.yaml`` config (``sae_path``,
    ``model``, ``data``, ``site``, ``layer``) and Hydra's group ``choices``."""
    path = None if OmegaConf.is_missing(cfg, SAE_KEY) else cfg[SAE_KEY]
    return resolve_sae(path, user_overrides(cfg, choices), need_data)


def _is_set(value: Any) -> bool:
    return value is not None and value != MISSING


def _defaults(schema: type) -> dict[str, Any]:
    """The defaults of a group's dataclass (required keys and the command keys left out)."""
    return {f.name: f.default for f in dataclasses.fields(schema)
            if f.default not in (MISSING, dataclasses.MISSING) and f.name not in COMMAND_KEYS}  # fmt: skip


def _apply(base: Mapping[str, Any], over: GroupOverride, schema: type) -> dict[str, Any]:
    """``base`` (or, for a chosen option, the schema's defaults + the option) + the user's keys."""
    if over.option is not None:
        base = {**_defaults(schema), **over.option}
    return {**base, **over.keys}


def _resolve_data(meta: Mapping[str, Any], trained: Mapping[str, Any], over: GroupOverride, need_data: bool,
                  where: Path) -> DictConfig | None:  # fmt: skip
    known = {f.name for f in dataclasses.fields(DataConfig)}
    if over.option is not None:
        data = {**_defaults(DataConfig), **over.option}
    elif trained.get("data"):
        data = {k: v for k, v in trained["data"].items() if k in known}  # keys of older versions dropped
    elif need_data:
        raise ConfigError(f"{where.parent} was not trained by saes (cfg.json has no metadata.config), so its "
                          "dataset is unknown: pass data=<option>, one of data=<pydocs|fineweb_edu|pile_uncopyrighted|"
                          "hub|files> (hub and files with data.path=<hub id or file glob>)")
    else:
        return None
    if not trained:  # what the foreign SAE was trained with
        if meta.get("context_size"):
            data["context_size"] = int(meta["context_size"])
        if isinstance(meta.get("exclude_special_tokens"), bool):
            data["exclude_special"] = meta["exclude_special_tokens"]
    return _validated_data({**data, **over.keys})


def _validated_data(data: dict[str, Any]) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), data)
        if OmegaConf.is_missing(merged, "source"):
            raise ConfigError("data.source is not set: pass data=<option>")
    except OmegaConfBaseException as err:  # a recorded or given value of the wrong type: name its key
        key, msg = getattr(err, "full_key", None), str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"data.{key}: {msg}" if key else f"data: {msg}") from None
    plain = OmegaConf.to_container(merged, enum_to_str=True)
    return OmegaConf.create(plain)


def _fill_layer(key: str, hook: str, layer: int | None) -> str:
    if "{layer}" not in hook:
        return hook
    if layer is None:
        raise ConfigError(f"{key}={hook!r} needs a layer and the SAE's metadata has none: pass layer=<block index> "
                          "or the full hook name")
    return hook.format(layer=layer)
