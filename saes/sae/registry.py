"""Architecture registry: ``@register("name")`` on an SAE class; ``build`` validates the config.

Adding a variant: one module in ``saes/sae/`` that calls ``register`` (the package imports all
its modules) and one ``conf/sae/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from saes.errors import ConfigError

if TYPE_CHECKING:
    from saes.sae.base import SAE

REGISTRY: dict[str, type["SAE"]] = {}


def register(name: str) -> Callable[[type["SAE"]], type["SAE"]]:
    def wrap(cls: type["SAE"]) -> type["SAE"]:
        cls.architecture = name
        REGISTRY[name] = cls
        return cls

    return wrap


def sae_class(name: str) -> type["SAE"]:
    if name not in REGISTRY:
        raise ConfigError(f"sae.architecture={name!r} is not registered; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def make_config(options: Mapping[str, Any]) -> Any:
    """The variant's config dataclass from ``sae.*`` options, validated by OmegaConf against it:
    an unknown key, a wrong type or a value outside an Enum's choices fails naming the key."""
    if "architecture" not in options:
        raise ConfigError("sae.architecture is missing; pick a variant with sae=<name>")
    cls = sae_class(options["architecture"]).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"sae.{unknown[0]} is not an option of sae={options['architecture']}; "
            f"its options: {sorted(known)}"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), dict(options)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"sae.{key}={options.get(key)!r} is not valid for sae={options['architecture']}: {reason}") from None


def build(options: Mapping[str, Any], d_in: int, d_out: int | None = None) -> "SAE":
    """A freshly constructed (uninitialised) SAE of the configured variant; ``d_out`` given makes
    it a transcoder (reads one hook, reconstructs another; no input centering)."""
    cfg = make_config(options)
    return sae_class(cfg.architecture)(cfg, d_in, d_out)
