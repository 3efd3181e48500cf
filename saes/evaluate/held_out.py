"""Held-out evaluations of the SAEs being trained: periodic (``training.eval_every``) and final.

All SAEs of a run are evaluated on the same held-out activations and contexts; the LM metrics of
several SAEs share the clean and zero-ablated forwards (see ``saes.evaluate.lm.LMEvaluator``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from saes.evaluate.metrics import evaluate
from saes.evaluate.lm import LMEvaluator, Splice

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from transformer_lens.model_bridge import TransformerBridge


def lm_evaluator(model: "TransformerBridge", heldout_NT: torch.Tensor, keep_fn: Callable[[torch.Tensor], torch.Tensor],
                 tokens: int, context_size: int, periodic: bool) -> LMEvaluator | None:
    """LM metrics on the first ``tokens`` held-out tokens (None when ``tokens`` is 0). A periodic
    evaluator keeps the clean log-probs so each evaluation costs one forward per SAE per batch."""
    if tokens <= 0:
        return None
    return LMEvaluator(model, heldout_NT[: max(1, tokens // context_size)], keep_fn, cache_clean_logprobs=periodic)


def periodic_lm_evaluator(cfg: "DictConfig", model: "TransformerBridge", heldout_NT: torch.Tensor,
                          keep_fn: Callable[[torch.Tensor], torch.Tensor]) -> LMEvaluator | None:
    """The LM evaluator of the periodic evaluations (None when they are off or LM-free)."""
    tokens = cfg.training.periodic_ce_tokens if cfg.training.eval_every else 0
    return lm_evaluator(model, heldout_NT, keep_fn, tokens, cfg.data.context_size, periodic=True)


def evaluate_saes(splices: Sequence[Splice], held: dict[str, torch.Tensor], lm: LMEvaluator | None) -> list[dict[str, Any]]:
    """``saes.evaluate.metrics.evaluate`` of every single-site SAE on the held-out activations
    ``{hook: [N, D]}``, with its LM metrics from ``lm``."""
    lm_results = lm(splices) if lm is not None else [None] * len(splices)
    out = []
    for s, extra in zip(splices, lm_results):
        (hook_in,), (hook_out,) = s.hooks_in, s.hooks_out  # reconstruction metrics of one hook
        out.append(evaluate(s.sae, held[hook_in], held[hook_out], extra))
    return out


def eval_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """``eval/<name>`` entries for metrics.jsonl and W&B: every number, and the density histogram."""
    record = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    record["eval/density_histogram"] = metrics["density_histogram"]
    return record
