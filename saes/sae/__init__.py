"""SAE variants (one module each), their registry and checkpoint formats.

Every module of this package is imported here, so a variant module that calls
``@register("name")`` is available as ``sae=name`` without touching anything else.
"""

import importlib
import pkgutil

from saes.sae.base import SAE, SAEConfig, TrainStepOutput
from saes.sae.registry import REGISTRY, build, make_config

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SAE", "SAEConfig", "TrainStepOutput", "REGISTRY", "build", "make_config"]
