"""Rewrite ``layer=`` on the command line before Hydra parses it.

With ``-m``, ``layer=0-31`` becomes one job per layer (``layer=0,1,...,31``), or with
``layers_per_job=8`` one job per group of 8 layers (``layer='0-7','8-15',...``), each job training
its layers from one shared forward pass. Without ``-m``, ``layer=range(0,4)`` becomes
``layer=0-3`` (all layers in this process). ``-m`` may stand anywhere on the command line.
"""

from __future__ import annotations

import re

from saes.layers import format_layers, parse_layers

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
