"""One evaluation of a saved SAE (``python -m saes.evaluate``).

The model, data and hooks come from the checkpoint's metadata with the user's overrides on top,
by the rules of :mod:`saes.resolve`. Writes ``evaluation.json`` into the run folder and returns
the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saes.errors import ConfigError
from saes.resolve import resolve_config

REPORT_FILE = "evaluation.json"


def run_evaluation(cfg: DictConfig, run_dir: Path, choices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.sae_path`` on held-out tokens; returns the report also written to
    evaluation.json. ``choices``: Hydra's group choices (a chosen group replaces the SAE's)."""
    import torch

    from saes.activations import ModelForwards
    from saes.data import load_corpus
    from saes.evaluate.lm import LMEvaluator, Splice
    from saes.evaluate.metrics import evaluate, position_summary
    from saes.models import load_model, resolve_device
    from saes.sae.formats import load_sae

    for key in ("eval_tokens", "batch_contexts"):
        if cfg[key] <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    setup = resolve_config(cfg, choices)
    device = resolve_device(cfg.model.device)
    sae = load_sae(setup.sae_dir, device=device).eval()
    model = load_model(setup.model.source, device=device, dtype=cfg.model.dtype or setup.model.get("dtype") or "float32")
    corpus = load_corpus(setup.data, model.tokenizer, setup.model.get("bos_token"))
    excluded = corpus.special_ids() if setup.data.exclude_special else None
    source = ModelForwards(model, [setup.hook_in, setup.hook_out], excluded, device=device)

    contexts_NT = corpus.heldout_contexts(cfg.eval_tokens)
    parts = list(source.stream(iter(contexts_NT), cfg.batch_contexts))
    x_ND = torch.cat([p[setup.hook_in] for p in parts])
    y_ND = torch.cat([p[setup.hook_out] for p in parts])
    if (x_ND.shape[1], y_ND.shape[1]) != (sae.d_in, sae.d_out):
        raise ConfigError(f"the SAE takes d_in={sae.d_in} and returns d_out={sae.d_out}, but {setup.hook_in} / "
                          f"{setup.hook_out} have width {x_ND.shape[1]} / {y_ND.shape[1]}: check site.hook_in and model")
    lm = None
    if cfg.ce_tokens > 0:
        ce_contexts = contexts_NT[: max(1, cfg.ce_tokens // setup.data.context_size)]
        lm = LMEvaluator(model, ce_contexts, source.keep_mask, cfg.batch_contexts)([Splice(sae, setup.hook_in, setup.hook_out)])[0]
    metrics = evaluate(sae, x_ND, y_ND, lm)
    metrics.pop("log10_density")
    histogram = metrics.pop("density_histogram")
    excluded_tokens = model.tokenizer.convert_ids_to_tokens(excluded.tolist()) if excluded is not None else []
    report = {
        **metrics,
        "density_histogram": histogram,
        "positions": {**position_summary(contexts_NT, source.keep_mask, excluded_tokens), "contexts": contexts_NT.shape[0],
                      "context_size": setup.data.context_size},
        "setup": {
            "sae": str(setup.sae_dir),
            "architecture": sae.architecture,
            "d_sae": sae.d_sae,
            "model": setup.model.source,
            "hook_in": setup.hook_in,
            "hook_out": setup.hook_out,
            "data": OmegaConf.to_container(setup.data, resolve=True),
            "metadata_source": "saes training config" if setup.trained_by_saes else "SAELens metadata + overrides",
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
