"""Every ``conf/sae/<architecture>.yaml`` agrees with its variant's config dataclass: one file per
registered variant, exactly the dataclass's fields, each set to the dataclass default. The YAML is
what ``sae=<name>`` composes; the dataclass is what ``saes.sae.make_config`` validates against and
what code building a config directly gets, so the two must not drift apart."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest
from omegaconf import OmegaConf

import saes.sae  # noqa: F401  (imports every variant module, so all of them register)
from saes.sae.registry import REGISTRY
from tests.conftest import REPO

SAE_CONF = REPO / "conf" / "sae"


def _plain(value: Any) -> Any:
    """Comparable form: Enum members by ``.value``, tuples and lists as lists, dicts recursively."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal, and a bool or a str only ever equals its own kind (``True == 1`` would hide a wrong type)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) != isinstance(b, bool) or isinstance(a, str) != isinstance(b, str):
        return False
    return a == b


def _defaults(name: str) -> dict[str, Any]:
    """``{field: default}`` of the variant's config class; ``architecture`` (required) is its name."""
    out = {}
    for f in dataclasses.fields(REGISTRY[name].config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        elif f.name == "architecture":
            out[f.name] = name
        else:
            out[f.name] = dataclasses.MISSING
    return out


def test_every_registered_variant_has_a_conf_file():
    assert REGISTRY, "no SAE variant registered"
    missing = sorted(name for name in REGISTRY if not (SAE_CONF / f"{name}.yaml").is_file())
    assert not missing, f"registered variants without conf/sae/<name>.yaml: {missing}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_conf_sets_exactly_the_dataclass_fields_at_their_defaults(name):
    path = SAE_CONF / f"{name}.yaml"
    if not path.is_file():
        pytest.fail(f"{path.relative_to(REPO)} is missing")
    conf = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    defaults = _defaults(name)
    cls = REGISTRY[name].config_class.__name__

    missing = sorted(set(defaults) - set(conf))
    extra = sorted(set(conf) - set(defaults))
    assert not missing, f"{path.name} lacks fields of {cls}: {missing}"
    assert not extra, f"{path.name} sets keys that {cls} does not have: {extra}"

    required = sorted(k for k, v in defaults.items() if v is dataclasses.MISSING)
    assert not required, f"{cls} fields without a default to compare {path.name} against: {required}"

    wrong = {
        key: (conf[key], _plain(default))
        for key, default in defaults.items()
        if not _same(_plain(conf[key]), _plain(default))
    }
    assert not wrong, f"{path.name} disagrees with {cls} defaults ({{key: (yaml, dataclass)}}): {wrong}"
