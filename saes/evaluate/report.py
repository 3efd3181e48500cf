"""The evaluation report as a terminal table (what ``python -m saes.evaluate`` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saes.formatting import format_number

RECON_KEYS = ["explained_variance", "mse", "l0", "dead_fraction", "dense_fraction"]
LM_KEYS = ["ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "delta_lm_loss", "kl"]


def format_report(report: dict[str, Any], path: Path | None = None) -> str:
    """The report as a terminal table (metrics, excluded positions, density histogram)."""
    s, pos, hist = report["setup"], report["positions"], report["density_histogram"]
    data = s["data"]
    excluded = ", ".join(pos["excluded_tokens"]) or "none"
    lines = [
        f"SAE       {s['sae']}  ({s['architecture']}, {s['d_sae']:,} latents)",
        f"model     {s['model']}  hook {s['hook_in']}" + (f" -> {s['hook_out']}" if s["hook_out"] != s["hook_in"] else ""),
        f"data      {data['path'] or data['source']}: held-out split, {pos['contexts']:,} contexts of {pos['context_size']} tokens",
        f"positions {pos['positions']:,}; excluded {pos['excluded_positions']:,} holding special tokens "
        f"({excluded}); padding: none (contexts are packed)",
        "",
        f"reconstruction, {report['eval_tokens']:,} tokens",
        *(f"  {k:<22} {format_number(report[k])}" for k in RECON_KEYS),
    ]
    if "ce_clean" in report:
        lines += ["", f"next-token loss (nats), {report['ce_tokens']:,} predictions",
                  *(f"  {k:<22} {format_number(report[k])}" for k in LM_KEYS)]
    fired = sum(hist["counts"])
    lines += ["", f"feature density (log10 firing rate): {fired:,} latents fire, {hist['dead']:,} never do"]
    top = max(hist["counts"]) or 1
    first = next((i for i, c in enumerate(hist["counts"]) if c), 0)
    for i in range(first, len(hist["counts"])):
        lo, hi, count = hist["bin_edges"][i], hist["bin_edges"][i + 1], hist["counts"][i]
        lines.append(f"  [{lo:5.1f}, {hi:5.1f})  {count:>7,}  {'#' * round(40 * count / top)}")
    if path is not None:
        lines += ["", f"written to {path}"]
    return "\n".join(lines)
