"""The sparsity frontier of a set of runs: L0 vs explained variance and L0 vs delta LM loss, one
point per SAE, colored by variant, as a PNG (matplotlib) and an interactive HTML page (plotly)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saes.compare.runs import Run

PANELS = [  # (metric, panel title, y-axis title)
    ("explained_variance", "L0 vs explained variance", "explained variance (higher is better)"),
    ("delta_lm_loss", "L0 vs delta LM loss", "delta LM loss, nats (lower is better)"),
]
X_KEY, X_TITLE = "l0", "L0 (mean active latents per token)"
MAX_POINT_LABEL = 32
"""Point labels (the differing config values) longer than this many characters are left out."""


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _by_variant(runs: list["Run"], y_key: str) -> dict[str, list["Run"]]:
    """Runs with both metrics, grouped by variant and sorted by L0 (so lines trace the frontier)."""
    groups: dict[str, list["Run"]] = {}
    for run in runs:
        if _finite(run.metrics.get(X_KEY)) and _finite(run.metrics.get(y_key)):
            groups.setdefault(run.variant, []).append(run)
    return {v: sorted(rs, key=lambda r: r.metrics[X_KEY]) for v, rs in sorted(groups.items())}


def spaced_ticks(values: list[float], min_ratio: float = 1.3) -> list[float]:
    """The runs' own L0 values as log-axis ticks, dropping any within ``min_ratio`` of the previous
    kept one (so neighbouring labels never overlap)."""
    ticks: list[float] = []
    for value in sorted({round(v, 1) for v in values if v > 0}):
        if not ticks or value / ticks[-1] >= min_ratio:
            ticks.append(value)
    return ticks


def _log_x(runs: list["Run"]) -> bool:
    l0 = [r.metrics[X_KEY] for r in runs if _finite(r.metrics.get(X_KEY)) and r.metrics[X_KEY] > 0]
    return bool(l0) and max(l0) / min(l0) >= 4


def frontier_png(runs: list["Run"], path: Path, title: str) -> Path:
    """Two side-by-side scatter panels; points labelled with the config values that differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 5.2), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    variants = sorted({r.variant for r in runs})
    for ax, (y_key, panel_title, y_title) in zip(axes, PANELS):
        groups = _by_variant(runs, y_key)
        for variant, group in groups.items():
            xs = [r.metrics[X_KEY] for r in group]
            ys = [r.metrics[y_key] for r in group]
            color = colors(variants.index(variant) % 10)
            ax.plot(xs, ys, "-", color=color, alpha=0.35, linewidth=1.2)
            ax.scatter(xs, ys, color=color, s=46, label=variant, zorder=3, edgecolors="white", linewidths=0.6)
            for run, x, y in zip(group, xs, ys):
                if len(run.label) <= MAX_POINT_LABEL:  # longer ones would cover the panel; see the table/HTML
                    note = ax.annotate(run.label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8,
                                       color="#333333", annotation_clip=True)
                    note.set_in_layout(False)  # labels must not shrink the axes
        if _log_x(runs):  # log scale, ticked at the runs' own L0 values
            from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ticks = spaced_ticks([r.metrics[X_KEY] for g in groups.values() for r in g])
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(X_TITLE)
        ax.set_ylabel(y_title)
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3, which="both")
        ax.margins(x=0.15, y=0.12)  # room for the point labels
        if groups:
            ax.legend(title="variant", loc="best", fontsize=9)
        else:
            ax.text(0.5, 0.5, f"no run has {y_key}", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def frontier_html(runs: list["Run"], path: Path, title: str) -> Path:
    """The same two panels, interactive: hover shows the run, its differing config and metrics.
    The page embeds plotly.js, so it opens offline."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[title for _, title, _ in PANELS])
    variants = sorted({r.variant for r in runs})
    for col, (y_key, _, y_title) in enumerate(PANELS, start=1):
        for variant, group in _by_variant(runs, y_key).items():
            color = qualitative.D3[variants.index(variant) % len(qualitative.D3)]
            hover = [
                "<br>".join([f"<b>{r.name}</b>", *(f"{k} = {v}" for k, v in r.diffs.items()),
                             *(f"{m} = {r.metrics[m]:.4g}" for m in ("l0", "explained_variance", "delta_lm_loss", "ce_recovered",
                                                                  "kl", "dead_fraction") if _finite(r.metrics.get(m)))])
                for r in group
            ]
            fig.add_trace(go.Scatter(
                x=[r.metrics[X_KEY] for r in group], y=[r.metrics[y_key] for r in group], mode="lines+markers+text",
                name=variant, legendgroup=variant, showlegend=col == 1, text=[r.label for r in group],
                textposition="top right", hovertext=hover, hoverinfo="text",
                marker={"size": 10, "color": color}, line={"color": color, "width": 1}, opacity=0.9,
            ), row=1, col=col)
        fig.update_xaxes(title_text=X_TITLE, type="log" if _log_x(runs) else "linear", row=1, col=col)
        fig.update_yaxes(title_text=y_title, row=1, col=col)
    fig.update_layout(title=title, legend_title_text="variant", template="plotly_white", height=560)
    fig.write_html(path, include_plotlyjs=True)
    return path
