"""The command line as users type it, made ready for Hydra: layer ranges expanded
(``saes.layers.expand_layer_args``), integers in scientific notation (``tokens=2e6``) written out
(Hydra reads ``2e6`` as a float and the typed configs want an int), and values holding ``=``
quoted (run folders are named by their overrides, e.g. ``.../layer=5,tokens=1000000``, which
Hydra's grammar cannot read unquoted)."""

from __future__ import annotations

import re

from saes.layers import expand_layer_args

SCIENTIFIC = re.compile(r"^([\w.+~]+)=(\d+(?:\.\d+)?[eE]\+?\d+)$")


def integral_scientific(arg: str) -> str:
    """``tokens=2e6`` -> ``tokens=2000000``; anything else (``lr=1e-3``, ``k=1.5e0``) unchanged."""
    match = SCIENTIFIC.match(arg)
    if match:
        value = float(match.group(2))
        if value.is_integer():
            return f"{match.group(1)}={int(value)}"
    return arg


def quote_equals(arg: str) -> str:
    """``sae=runs/layer=5`` -> ``sae='runs/layer=5'``; quoted values and flags unchanged."""
    key, sep, value = arg.partition("=")
    if not sep or "=" not in value or value[:1] in ("'", '"') or key.startswith("-"):
        return arg
    return f"{key}='{value}'"


def prepare_argv(argv: list[str]) -> list[str]:
    """``argv`` rewritten as described in the module docstring."""
    return expand_layer_args([quote_equals(integral_scientific(a)) for a in argv])
