"""``python -m saes.analyze sae=<run folder>``: statistics and examples of every feature of an SAE
into MongoDB (see conf/analyze.yaml; ``--help`` lists the groups). ``sae=`` is stored as
``sae_path`` (``saes.resolve.sae_argv``), as in ``python -m saes.evaluate``.

    python -m saes.analyze sae=outputs/train/smollm2-135m_topk/default
    python -m saes.analyze sae=<run> analysis.tokens=1000000 data=fineweb_edu
    python -m saes.analyze sae=path/to/saelens_sae model=gpt2 data=pydocs   # a foreign checkpoint
    MONGO_URI=mongodb://db.example:27017 python -m saes.analyze sae=<run>
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saes.analysis.config import register_analyze_configs
from saes.errors import ConfigError
from saes.cli import prepare_argv
from saes.resolve import sae_argv

register_analyze_configs()


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from saes.analysis.run import run_analysis  # heavy imports after Hydra has parsed the CLI
    from saes.store import LocalServerError, StoreConnectionError

    try:
        summary = run_analysis(cfg, HydraConfig.get().runtime.choices)
    except (ConfigError, StoreConnectionError, LocalServerError) as err:
        print(f"saes.analyze: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    """What was analyzed and where it went."""
    return "\n".join([
        f"analysis {s['analysis_id']} of {s['dictionary_id']} published to {s['uri']} (database {s['database']})",
        f"  features          {s['features']:,} ({s['alive']:,} alive, {s['dead']:,} dead)",
        f"  tokens            {s['tokens']:,} in {s['contexts']:,} contexts ({s['tokens_per_second']:,.0f} tokens/s streamed)",
        f"  l0                {s['l0']:.1f}",
        f"  write seconds     {s['write_seconds']:.1f}",
        f"  wall seconds      {s['wall_seconds']:.1f}",
    ])  # fmt: skip


def cli() -> None:
    """Entry point: ``sae=`` becomes ``sae_path=`` before Hydra parses the command line."""
    sys.argv = [sys.argv[0], *prepare_argv(sae_argv(sys.argv[1:]))]
    main()


if __name__ == "__main__":
    cli()
