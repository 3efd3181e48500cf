"""``python -m saes.cache``: write a model's activations once, train many SAEs from them.

    python -m saes.cache layer=0-7 tokens=2e6                    # one pass, 8 hooks, float32
    python -m saes.cache tokens=1e6 cache.dtype=bfloat16          # half the disk
    python -m saes.train activations=cache activations.path=outputs/cache/smollm2-135m/default
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from saes.config import register_configs
from saes.errors import ConfigError
from saes.cli import prepare_argv

register_configs()


@hydra.main(config_path="conf", config_name="cache", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from saes.activations.cache.writer import write_cache  # heavy imports after Hydra has parsed the CLI

    folder = Path(cfg.cache.path)
    try:
        manifest = write_cache(cfg, folder)
    except ConfigError as err:
        print(f"saes.cache: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    gb = manifest.extra["bytes"] / 1e9
    print(f"cache written to {folder}: {manifest.rows:,} rows x {len(manifest.plan.hooks)} hook(s), {len(manifest.shards)} shards, "
          f"{gb:.2f} GB ({manifest.plan.dtype})\ntrain from it: python -m saes.train activations=cache activations.path={folder}")


def cli() -> None:
    """Entry point: ``layer=0-7`` stays one pass (all layers in this process)."""
    sys.argv = [sys.argv[0], *prepare_argv(sys.argv[1:])]
    main()


if __name__ == "__main__":
    cli()
