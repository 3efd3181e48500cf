"""``python -m saes.compare <dir-or-glob>...``: compare finished runs (e.g. a multirun sweep folder).

Prints a table of runs (the config keys that differ, then final metrics) and writes the L0 vs
explained-variance and L0 vs delta-LM-loss frontiers as ``compare.png`` and ``compare.html``.

    python -m saes.compare outputs/multirun/smollm2-135m_topk
    python -m saes.compare 'outputs/train/*' --out figures/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saes.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saes.compare", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("paths", nargs="+", help="run folders, folders holding runs (searched recursively) or globs")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for compare.png and compare.html (default: the folder given, else the current one)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    from saes.compare.runs import format_table, load_runs
    from saes.compare.plots import frontier_html, frontier_png

    try:
        runs = load_runs(args.paths)
    except ConfigError as err:
        print(f"saes.compare: error: {err}", file=sys.stderr)
        return 2
    print(format_table(runs))
    if args.no_plots:
        return 0
    out = args.out or (Path(args.paths[0]) if len(args.paths) == 1 and Path(args.paths[0]).is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    title = f"{len(runs)} runs in {' '.join(args.paths)}"
    png = frontier_png(runs, out / "compare.png", title)
    html = frontier_html(runs, out / "compare.html", title)
    print(f"\nfrontier plots: {png}  {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
