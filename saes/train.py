"""``python -m saes.train``: train an SAE (see conf/train.yaml; ``--help`` lists the groups)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saes.config import register_configs
from saes.errors import ConfigError

register_configs()


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from saes.training.run import run_training  # heavy imports after Hydra has parsed the CLI

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_training(cfg, run_dir)
    except ConfigError as err:
        print(f"saes.train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_summary(metrics, run_dir))
    return metrics


def format_summary(metrics: dict, run_dir: Path) -> str:
    """A short table of the final metrics."""
    keys = ["explained_variance", "l0", "dead_fraction", "ce_clean", "ce_spliced", "ce_zero", "delta_lm_loss",
            "ce_recovered", "kl", "train_tokens", "train_tokens_per_second", "wall_seconds"]
    rows = [f"  {k:<24} {metrics[k]:,.0f}" if metrics[k] >= 1000 else f"  {k:<24} {metrics[k]:.4g}"
            for k in keys if k in metrics]
    return "\n".join([f"SAE saved to {run_dir / 'sae'}", *rows])


if __name__ == "__main__":
    main()
