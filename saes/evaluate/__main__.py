"""``python -m saes.evaluate sae=<folder>``: held-out metrics of a saved SAE (conf/evaluate.yaml).

    python -m saes.evaluate sae=outputs/train/smollm2-135m_topk/default
    python -m saes.evaluate sae=path/to/saelens_sae model=gpt2 data=pydocs   # a foreign checkpoint

The config comes from ConfigStore rather than the conf/ folder so that ``sae=`` is a plain key
here, not the training config group of SAE variants.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saes.evaluate.config import register_evaluate_configs
from saes.errors import ConfigError

register_evaluate_configs()


@hydra.main(config_path=None, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from saes.evaluate.report import format_report
    from saes.evaluate.run import REPORT_FILE, run_evaluation  # heavy imports after the CLI is parsed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        report = run_evaluation(cfg, run_dir, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
    except ConfigError as err:
        print(f"saes.evaluate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(report, run_dir / REPORT_FILE))
    return report


if __name__ == "__main__":
    main()
