"""The ``layer=`` spec: an int (``3``), a range (``0-31``, inclusive), a list (``0,4,8``) or a
mix (``0-3,8``). Hydra's ``range(0,32)`` is expanded by Hydra itself (with ``-m``) or by
``launchers.argv`` (without)."""

from __future__ import annotations

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
