"""A whole analysis: SAE + metadata -> database check -> model -> streaming pass -> weight effects
-> one document per feature, published atomically (``saes.store.publish_analysis``).

Bad input fails before the expensive parts: an unknown SAE path or bad setting before anything is
loaded, an unreachable database within seconds (before the model is loaded, nothing written), a
hook that does not exist or whose width is not the SAE's d_in before any forward.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from saes.activations import ModelForwards, keep_mask, validate_hooks
from saes.activations.hooks import is_residual, probe_hook_width
from saes.analysis.accumulate import FeatureAccumulator
from saes.analysis.config import AnalysisConfig, validate_analysis
from saes.analysis.documents import WeightEffects, dictionary_stats, feature_documents
from saes.analysis.effects import logit_effects, nearest_neighbours
from saes.analysis.stream import analyze_stream, batches
from saes.analysis.target import Target, resolve_target, run_metrics
from saes.analysis.tokens import TokenStrings
from saes.data import iter_documents, iter_token_stream, load_corpus, pack_contexts
from saes.errors import ConfigError
from saes.models import load_model, resolve_device
from saes.sae.formats import WEIGHTS_FILE, load_sae
from saes.store import connect, ensure_server, publish_analysis, upsert_dictionary
from saes.store.schema import redact_uri

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from saes.sae.base import SAE

def check_widths(model: "TransformerBridge", sae: "SAE", target: Target) -> bool:
    """Raise :class:`ConfigError` when the SAE's d_in is not the hook's width; return whether the
    decoder writes into the residual stream (so logit effects apply)."""
    validate_hooks([target.hook_in, target.hook_out], model.hook_dict.keys(), model.cfg.n_layers)
    width = probe_hook_width(model, target.hook_in)
    if width != sae.d_in:
        raise ConfigError(
            f"the SAE reads vectors of d_in={sae.d_in}, but {target.hook_in} of model {target.model.source} has width "
            f"{width}: pass the model the SAE was trained on (model.source=...) or a hook of width {sae.d_in} (site.hook_in=...)"
        )
    return is_residual(target.hook_out) and sae.d_out == int(model.cfg.d_model)


def run_analysis(
    cfg: DictConfig,
    choices: Mapping[str, Any] | None = None,
    progress: bool = True,
    model: "TransformerBridge | None" = None,
) -> dict[str, Any]:
    """Analyze ``cfg.sae_path`` and publish it; returns a summary (ids, counts, timings, URI).
    ``model``: the already loaded model of the SAE's ``model.source`` (skips loading it)."""
    wall = time.perf_counter()
    settings: AnalysisConfig = OmegaConf.to_object(cfg.analysis)  # type: ignore[assignment]
    validate_analysis(settings)
    target = resolve_target(cfg, choices)
    sae = load_sae(target.sae_dir, device=resolve_device(cfg.device)).eval()
    uri = cfg.mongo_uri or ensure_server()  # $MONGO_URI, else the local server (started on demand)
    db = connect(uri, cfg.mongo_db)  # fails within seconds, naming the URI; writes nothing

    if model is None:
        model = load_model(target.model.source, device=target.model.device, dtype=target.model.dtype)
    residual_out = check_widths(model, sae, target)
    corpus = load_corpus(target.data, model.tokenizer, target.model.bos_token)
    excluded = corpus.special_ids() if target.data.exclude_special else None
    source = ModelForwards(model, [target.hook_in], excluded_ids=None, device=resolve_device(cfg.device))
    ctx_len = int(target.data.context_size)
    n_contexts = max(1, settings.tokens // ctx_len)
    contexts = pack_contexts(iter_token_stream(iter_documents(target.data), model.tokenizer, corpus.bos_id), ctx_len, corpus.bos_id)
    acc = FeatureAccumulator(sae.d_sae, settings, device=next(sae.parameters()).device)
    times = analyze_stream(source, sae, acc, batches(contexts, settings.batch_contexts, n_contexts),
                           lambda tokens_BT: keep_mask(tokens_BT, excluded), n_contexts * ctx_len, progress)  # fmt: skip
    if acc.rows == 0:
        raise ConfigError(f"the dataset gave no analyzable tokens (data.source={target.data.source})")

    t0 = time.perf_counter()
    W_dec_FO = sae.W_dec_FO.detach()
    effects = WeightEffects(
        logits=logit_effects(W_dec_FO, model, settings.logit_effects) if residual_out and settings.logit_effects else None,
        neighbours=nearest_neighbours(W_dec_FO, settings.neighbours) if settings.neighbours and sae.d_sae > 1 else None,
    )
    effects_seconds = time.perf_counter() - t0
    acc.to_cpu()

    metrics = run_metrics(target)
    stats = dictionary_stats(acc)
    upsert_dictionary(db, target.dictionary_id, config=_dictionary_config(target), provenance=_provenance(target),
                      metrics=metrics)  # fmt: skip
    t1 = time.perf_counter()
    meta = {
        "sae_path": str(target.sae_dir.resolve()),
        "sae_fingerprint": _fingerprint(target),
        "model": OmegaConf.to_container(target.model),
        "hook_in": target.hook_in,
        "hook_out": target.hook_out,
        "data": OmegaConf.to_container(target.data),
        "settings": OmegaConf.to_container(cfg.analysis),
        "window": {"before": settings.window_before, "after": settings.window_after},
        "histogram_bins": {"min": settings.hist_min, "max": settings.hist_max, "per_decade": settings.hist_bins_per_decade},
        "logit_effects": None if residual_out else f"decoder output ({target.hook_out}) is not in the residual stream",
        "stats": stats,
        "sae_metrics": metrics,
        "timing": {"stream_seconds": times.seconds, "tokens_per_second": times.tokens_per_second,
                   "forward_seconds": times.forward, "encode_seconds": times.encode,
                   "accumulate_seconds": times.accumulate, "effects_seconds": effects_seconds},
    }  # fmt: skip
    docs = feature_documents(acc, settings, TokenStrings(model.tokenizer), effects)
    analysis_id = publish_analysis(db, target.dictionary_id, docs, meta=meta, expected_count=sae.d_sae)
    return {
        "dictionary_id": target.dictionary_id,
        "analysis_id": analysis_id,
        "features": sae.d_sae,
        "uri": redact_uri(uri),
        "database": db.name,
        **{k: stats[k] for k in ("tokens", "contexts", "alive", "dead", "l0")},
        "tokens_per_second": times.tokens_per_second,
        "write_seconds": time.perf_counter() - t1,
        "wall_seconds": time.perf_counter() - wall,
    }


def _dictionary_config(target: Target) -> dict[str, Any]:
    """The SAE's cfg.json without its metadata, plus the training config it records."""
    config = {k: v for k, v in target.sae_cfg.items() if k != "metadata"}
    config["training"] = target.metadata.get("config")
    return config


def _provenance(target: Target) -> dict[str, Any]:
    meta = target.metadata
    keys = ("model_name", "hook_name", "hook_name_out", "context_size", "dataset_path", "training_tokens", "status")
    return {"sae_path": str(target.sae_dir.resolve()), "host": socket.gethostname(), "user": os.environ.get("USER"),
            **{k: meta.get(k) for k in keys}}  # fmt: skip


def _fingerprint(target: Target) -> str | None:
    """sha256 (first 16 hex digits) of the weights file: tells whether the SAE changed."""
    try:
        return hashlib.sha256((target.sae_dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    except OSError:
        return None
