"""``python -m saes.evaluate sae=<folder>``: held-out metrics of a saved SAE (conf/evaluate.yaml).

    python -m saes.evaluate sae=outputs/train/smollm2-135m_topk/default
    python -m saes.evaluate sae=path/to/saelens_sae model=gpt2 data=pydocs   # a foreign checkpoint

``sae=`` is stored as ``sae_path`` (``saes.resolve.sae_argv``), as in ``python -m saes.analyze``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saes.errors import ConfigError
from saes.evaluate.config import register_evaluate_configs
from saes.cli import prepare_argv
from saes.resolve import sae_argv

register_evaluate_configs()


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from saes.evaluate.report import format_report
    from saes.evaluate.run import REPORT_FILE, run_evaluation  # heavy imports after the CLI is parsed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        report = run_evaluation(cfg, run_dir, dict(hydra_cfg.runtime.choices))
    except ConfigError as err:
        print(f"saes.evaluate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(report, run_dir / REPORT_FILE))
    return report


def cli() -> None:
    """Entry point: ``sae=`` becomes ``sae_path=`` before Hydra parses the command line."""
    sys.argv = [sys.argv[0], *prepare_argv(sae_argv(sys.argv[1:]))]
    main()


if __name__ == "__main__":
    cli()
