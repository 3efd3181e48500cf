"""Plain-data helpers every command's output shares: numbers in tables, nested configs as keys."""

from __future__ import annotations

from typing import Any


def format_number(value: float) -> str:
    """A metric for a terminal table: thousands separators from 1,000 up, else 4 significant digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}`` (so W&B and tables can compare runs key by key)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
