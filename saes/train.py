"""``python -m saes.train``: train SAEs (see conf/train.yaml; ``--help`` lists the groups).

    python -m saes.train                                  # the default SAE, offline, on CPU
    python -m saes.train layer=0-3                        # 4 SAEs from one forward pass
    python -m saes.train model=llama31_8b layer=0-31 -m   # one job per layer (see launcher=)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from saes.cli import prepare_argv
from saes.config import register_configs
from saes.distributed.context import lost_ranks_message
from saes.errors import ConfigError
from saes.formatting import format_number

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from saes.training.run import run_training  # heavy imports after Hydra has parsed the CLI

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        results = run_training(cfg, run_dir, group=group)
    except ConfigError as err:
        print(f"saes.train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C before training started (the loop turns it into a checkpoint)
        print("saes.train: interrupted before training started: nothing to save", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError as err:
        if (lost := lost_ranks_message(err, run_dir)) is None:
            raise
        print(f"saes.train: error: {lost}", file=sys.stderr)
        raise SystemExit(1) from None
    if results:
        print(format_summary(results, run_dir))
    return results


SUMMARY_KEYS = ["explained_variance", "l0", "dead_fraction", "ce_clean", "ce_spliced", "ce_zero", "delta_lm_loss",
                "ce_recovered", "kl", "train_tokens", "train_tokens_per_second", "wall_seconds"]


def format_summary(results: dict[str, dict], run_dir: Path) -> str:
    """The final metrics: a column per SAE."""
    names = list(results)
    header = f"  {'':<24} " + " ".join(f"{n:>14}" for n in names) if len(names) > 1 else None
    rows = [f"  {k:<24} " + " ".join(f"{format_number(results[n][k]):>14}" if len(names) > 1 else format_number(results[n][k]) for n in names)
            for k in SUMMARY_KEYS if all(k in results[n] for n in names)]
    where = [f"SAE saved to {run_dir / n / 'sae'}" for n in names]
    return "\n".join([*(p.replace("/./", "/") for p in where), *([header] if header else []), *rows])


def cli() -> None:
    """Entry point: expands ``layer=`` ranges for ``-m`` before Hydra parses the command line."""
    sys.argv = [sys.argv[0], *prepare_argv(sys.argv[1:])]
    main()


if __name__ == "__main__":
    cli()
