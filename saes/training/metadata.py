"""What a saved SAE records about its training (one place for the checkpoint metadata schema).

``cfg.json`` ``metadata`` holds SAELens's keys (``model_name``, ``hook_name``, ``context_size``,
...) plus ``hook_name_out``, ``training_tokens``, ``activation_scale_folded``, ``status``
(``training``, ``checkpoint``, ``intermediate``, ``interrupted``, ``preempted``, ``finished``) and
``config``: the run's resolved config with this SAE's layer, hooks and ``sae`` options, from which
``saes.resolve`` rebuilds its model, data and hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.sae.formats import save_sae
from saes.training.plan import MemberSpec
from saes.training.trainer import SAETrainer

SAE_DIR = "sae"
"""Each SAE's loadable checkpoint folder, inside its member folder."""


def checkpoint_metadata(cfg: DictConfig, spec: MemberSpec, trainer: SAETrainer, status: str) -> dict[str, Any]:
    """SAELens ``metadata`` plus what saes needs to evaluate/analyze the SAE later."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["layer"], config["site"] = spec.layer, {"hook_in": spec.hook_in, "hook_out": spec.hook_out}
    config["sae"] = spec.sae_options
    return {
        "model_name": cfg.model.source,
        "hook_name": spec.hook_in,
        "hook_name_out": spec.hook_out,
        "hook_head_index": None,
        "context_size": cfg.data.context_size,
        "prepend_bos": True,
        "dataset_path": cfg.data.path or cfg.data.source,
        "exclude_special_tokens": cfg.data.exclude_special,
        "training_tokens": trainer.tokens,
        "activation_scale_folded": trainer.scale_in,
        "status": status,
        "config": config,
    }


def save_member_sae(cfg: DictConfig, spec: MemberSpec, trainer: SAETrainer, folder: Path, status: str,
                    log10_density_F: Any = None, sae: Any = None) -> Path:
    """The SAE as it stands, normalization folded in (``sae``: already folded, e.g. gathered from
    its shards), to ``folder`` (atomically)."""
    sae = trainer.folded_copy().eval() if sae is None else sae
    return save_sae(sae, folder, checkpoint_metadata(cfg, spec, trainer, status), log10_density_F)
