"""SAE variants (one module each), their registry and checkpoint formats."""

from saes.sae import topk  # noqa: F401  (registers the variant)
from saes.sae.base import SAE, SAEConfig, TrainStepOutput
from saes.sae.registry import REGISTRY, build, make_config

__all__ = ["SAE", "SAEConfig", "TrainStepOutput", "REGISTRY", "build", "make_config"]
