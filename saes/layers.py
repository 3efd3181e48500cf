"""The ``layer=`` spec (one place for its rules): an int (``3``), a range (``0-31``, inclusive), a
list (``0,4,8``) or a mix (``0-3,8``); and its rewriting on the command line before Hydra parses it.

With ``-m``, ``layer=0-31`` becomes one job per layer (``layer=0,1,...,31``), or with
``layers_per_job=8`` one job per group of 8 layers (``layer='0-7','8-15',...``), each job training
its layers from one shared forward pass. Without ``-m``, ``layer=range(0,4)`` becomes
``layer=0-3`` (all layers in this process). ``-m`` may stand anywhere on the command line.
"""

from __future__ import annotations

import re
from typing import Any

from saes.errors import ConfigError


def parse_layers(spec: Any) -> list[int]:
    """Sorted unique layer indices of a ``layer=`` value."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, (list, tuple)) or type(spec).__name__ == "ListConfig":
        return sorted({layer for item in spec for layer in parse_layers(item)})
    text = str(spec).strip().strip("[]")
    layers: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ConfigError(f"layer={spec!r}: range {part} is empty (write low-high)")
                layers.update(range(int(lo), int(hi) + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise ConfigError(f"layer={spec!r} is not a layer spec; use 3, 0-31 or 0,4,8") from None
    if not layers:
        raise ConfigError(f"layer={spec!r} names no layer")
    return sorted(layers)


def format_layers(layers: list[int]) -> str:
    """Inverse of ``parse_layers`` for contiguous runs: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)


RANGE_CALL = re.compile(r"^range\((\d+)\s*,\s*(\d+)(?:\s*,\s*(\d+))?\)$")


def _layers_of(value: str) -> list[int] | None:
    match = RANGE_CALL.match(value.strip())
    if match:
        lo, hi, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)
        return list(range(lo, hi, step))
    if re.fullmatch(r"[\d,\-\s\[\]]+", value) and ("-" in value or "," in value):
        return parse_layers(value)
    return None


def expand_layer_args(argv: list[str]) -> list[str]:
    """``argv`` with its ``layer=`` argument expanded as described in the module docstring."""
    multirun = "-m" in argv or "--multirun" in argv
    per_job = 1
    for arg in argv:
        if arg.startswith("layers_per_job="):
            per_job = max(1, int(arg.split("=", 1)[1]))
    out = []
    for arg in argv:
        if not arg.startswith("layer="):
            out.append(arg)
            continue
        layers = _layers_of(arg.split("=", 1)[1])
        if layers is None:
            out.append(arg)
        elif not multirun:
            out.append(f"layer='{format_layers(layers)}'")
        elif per_job == 1:
            out.append("layer=" + ",".join(map(str, layers)))
        else:
            groups = [layers[i : i + per_job] for i in range(0, len(layers), per_job)]
            out.append("layer=" + ",".join(f"'{format_layers(g)}'" for g in groups))
    # argparse cannot split positional overrides around a flag: put -m/--multirun first
    flags = [a for a in out if a in ("-m", "--multirun")]
    return flags + [a for a in out if a not in ("-m", "--multirun")]


def site_hooks(site: Any, layer_spec: Any) -> list[str]:
    """Every hook a site reads or writes at the layers of ``layer_spec``: each ``site.hook_in``
    template (one or a list) and ``site.hook_out`` with ``{layer}`` filled, in order, unique."""
    templates = list(site.hook_in) if isinstance(site.hook_in, (list, tuple)) or type(site.hook_in).__name__ == "ListConfig" \
        else [site.hook_in]
    hooks = []
    for layer in parse_layers(layer_spec):
        for template in templates:
            hooks += [str(template).format(layer=layer), str(site.hook_out or template).format(layer=layer)]
    return list(dict.fromkeys(hooks))
