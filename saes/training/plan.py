"""Which SAEs one run trains: every layer of ``layer`` x every hook of ``site.hook_in`` x every
combination of list-valued ``sae.*`` options (e.g. ``sae.k=[16,32]``). All share one model
forward per batch."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from saes.layers import parse_layers

SINGLE_FOLDER = "."  # a run with one SAE keeps it directly in the run folder


@dataclass(frozen=True)
class MemberSpec:
    """One SAE of a run."""

    name: str
    """Folder (relative to the run folder) and W&B name suffix, e.g. ``L3.resid_post.k16``."""
    layer: int
    hooks_in: tuple[str, ...]
    """Hooks the dictionary reads (one for the variants here)."""
    hooks_out: tuple[str, ...]
    """Hooks it reconstructs (``hooks_in`` for an SAE)."""
    sae_options: dict[str, Any]

    @property
    def hook_in(self) -> str:
        """The input hook of a single-site member."""
        (hook,) = self.hooks_in
        return hook

    @property
    def hook_out(self) -> str:
        """The output hook of a single-site member."""
        (hook,) = self.hooks_out
        return hook


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, ListConfig)):
        return list(value)
    return [value]


def _short_hook(hook: str) -> str:
    return hook.split(".")[-1].removeprefix("hook_") if hook.startswith("blocks.") else hook


def _list_fields(architecture: Any) -> set[str]:
    """Options of the variant whose value is itself a list (e.g. matryoshka's ``prefix_fractions``):
    a flat list there is one value; a list of lists sweeps it."""
    import dataclasses

    from saes.sae.registry import REGISTRY

    cls = REGISTRY.get(architecture) if isinstance(architecture, str) else None
    if cls is None:
        return set()
    return {f.name for f in dataclasses.fields(cls.config_class) if str(f.type).startswith(("list", "List"))}


def _nested(value: list[Any]) -> bool:
    return all(isinstance(v, list) for v in value)


def plan_members(cfg: DictConfig) -> list[MemberSpec]:
    """The run's SAEs, in a stable order."""
    layers = parse_layers(cfg.layer)
    hooks_in = _as_list(cfg.site.hook_in)
    sae = OmegaConf.to_container(cfg.sae, resolve=True)
    list_fields = _list_fields(sae.get("architecture"))
    swept = {k: v for k, v in sae.items() if isinstance(v, list) and (k not in list_fields or _nested(v))}
    combos = [dict(zip(swept, values)) for values in itertools.product(*swept.values())] or [{}]
    members = []
    for layer, hook_template, combo in itertools.product(layers, hooks_in, combos):
        hook_in = hook_template.format(layer=layer)
        hook_out = (cfg.site.hook_out or hook_template).format(layer=layer)
        parts = [f"L{layer}"] if len(layers) > 1 else []
        parts += [_short_hook(hook_in)] if len(hooks_in) > 1 else []
        parts += [f"{k}{v}" for k, v in combo.items()]
        members.append(MemberSpec(".".join(parts) or SINGLE_FOLDER, layer, (hook_in,), (hook_out,), {**sae, **combo}))
    return members
