"""Next-token losses of the language model with SAEs spliced in, at one or many hooks.

Definitions:
- CE losses are next-token cross-entropies (nats per token) averaged over positions whose input
  token is kept (special tokens such as BOS excluded when ``data.exclude_special``; the last
  position of a context has no target). At excluded positions the spliced and zero-ablated models
  keep the clean activation. ``ce_clean``: the model as is; ``ce_spliced``: the dictionary's
  reconstructions replace the activations at its output hook(s); ``ce_zero``: those activations
  are zeroed. A dictionary with one input hook is spliced in one forward (the input is read as
  it runs, so a transcoder's input sees upstream replacements); one with several input hooks reads
  them all from a clean forward first, then a second forward replaces every output hook. delta LM loss = ce_spliced - ce_clean; CE recovered = (ce_zero - ce_spliced) /
  (ce_zero - ce_clean); KL = KL(clean || spliced) of the next-token distributions, averaged over
  the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from saes.sae.base import SAE


@dataclass(frozen=True)
class Splice:
    """A dictionary spliced into the model: it reads ``hooks_in`` and replaces ``hooks_out`` (the
    same hook for an SAE, a downstream one for a transcoder, several for multi-site dictionaries).
    A single hook may be given as a string."""

    sae: "SAE"
    hooks_in: tuple[str, ...]
    hooks_out: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("hooks_in", "hooks_out"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))


def _next_token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, keep_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ce_P, logprobs_PV)`` at the P kept positions that have a next token."""
    mask_BT = keep_BT[:, :-1]
    logprobs_PV = logits_BTV[:, :-1][mask_BT].float().log_softmax(-1)
    ce_P = -logprobs_PV.gather(-1, tokens_BT[:, 1:][mask_BT][:, None]).squeeze(-1)
    return ce_P, logprobs_PV


class LMEvaluator:
    """Next-token CE and KL metrics of spliced SAEs on a fixed set of held-out contexts.

    The clean and zero-ablated losses do not depend on the SAE: they are computed on the first
    call and reused. Each call runs one spliced forward per SAE per batch, plus one clean forward
    per batch for the KL unless ``cache_clean_logprobs`` keeps the clean next-token log-probs
    (``kept positions x vocab`` floats, e.g. 200 MB for 1,024 tokens of a 49K vocabulary).
    """

    def __init__(self, model: "TransformerBridge", contexts_NT: torch.Tensor,
                 keep_fn: Callable[[torch.Tensor], torch.Tensor], batch_contexts: int = 8,
                 cache_clean_logprobs: bool = False):
        self.model = model
        self.contexts_NT = contexts_NT
        self.keep_fn = keep_fn
        self.batch_contexts = batch_contexts
        self.cache_clean_logprobs = cache_clean_logprobs
        self._clean_ce: list[float] = []  # per batch: summed clean CE
        self._clean_logprobs: list[torch.Tensor] = []
        self._zero_ce: dict[tuple[str, ...], list[float]] = {}  # per output hooks: per-batch summed zero-ablation CE
        self._count = 0

    @torch.no_grad()
    def __call__(self, splices: Sequence[Splice]) -> list[dict[str, float]]:
        """Metrics of each splice (see the module docstring), in order."""
        from saes.sae.compat import check_sae_fits

        for splice in splices:  # before any forward
            if len(splice.hooks_in) == len(splice.hooks_out) == 1:
                check_sae_fits(splice.sae, self.model.cfg, splice.hooks_in[0], splice.hooks_out[0])
        device = next(self.model.parameters()).device
        first = not self._clean_ce
        spliced = [{"ce": 0.0, "kl": 0.0} for _ in splices]
        for b, i in enumerate(range(0, self.contexts_NT.shape[0], self.batch_contexts)):
            tokens_BT = self.contexts_NT[i : i + self.batch_contexts].to(device)
            keep_BT = self.keep_fn(tokens_BT)
            if b < len(self._clean_logprobs):
                clean_lp = self._clean_logprobs[b]
            else:
                ce, clean_lp = _next_token_logprobs(self.model(tokens_BT, return_type="logits"), tokens_BT, keep_BT)
                if first:
                    self._clean_ce.append(ce.sum().item())
                    self._count += ce.numel()
                if self.cache_clean_logprobs:
                    self._clean_logprobs.append(clean_lp)
            for hooks in dict.fromkeys(s.hooks_out for s in splices):
                zero_ce = self._zero_ce.setdefault(hooks, [])
                if len(zero_ce) <= b:
                    fwd_hooks = [(hook, _zero_hook(keep_BT)) for hook in hooks]
                    logits = self.model.run_with_hooks(tokens_BT, return_type="logits", fwd_hooks=fwd_hooks)
                    zero_ce.append(_next_token_logprobs(logits, tokens_BT, keep_BT)[0].sum().item())
            for splice, sums in zip(splices, spliced):
                logits = self.model.run_with_hooks(tokens_BT, return_type="logits", fwd_hooks=self._splice_hooks(splice, tokens_BT, keep_BT))
                ce, lp = _next_token_logprobs(logits, tokens_BT, keep_BT)
                sums["ce"] += ce.sum().item()
                sums["kl"] += F.kl_div(lp, clean_lp, log_target=True, reduction="sum").item()
        ce_clean = sum(self._clean_ce) / self._count
        results = []
        for splice, sums in zip(splices, spliced):
            ce_zero = sum(self._zero_ce[splice.hooks_out]) / self._count
            ce_spliced = sums["ce"] / self._count
            denom = ce_zero - ce_clean
            results.append({
                "ce_clean": ce_clean,
                "ce_spliced": ce_spliced,
                "ce_zero": ce_zero,
                "delta_lm_loss": ce_spliced - ce_clean,
                "ce_recovered": (ce_zero - ce_spliced) / denom if denom != 0 else float("nan"),
                "kl": sums["kl"] / self._count,
                "ce_tokens": self._count,
            })
        return results

    def _splice_hooks(self, splice: Splice, tokens_BT: torch.Tensor, keep_BT: torch.Tensor) -> list[tuple[str, Callable]]:
        """Forward hooks that splice ``splice`` in (see the module docstring)."""
        if len(splice.hooks_in) == 1:
            return _one_pass_hooks(splice, keep_BT)
        _, cache = self.model.run_with_cache(tokens_BT, names_filter=list(splice.hooks_in))
        xs = [cache[hook].reshape(-1, cache[hook].shape[-1]) for hook in splice.hooks_in]
        sae_device = splice.sae.W_dec_FO.device
        y_hats = splice.sae.reconstruct([x.to(sae_device, torch.float32) for x in xs])
        return [(hook, _replace_hook(y_hat, keep_BT)) for hook, y_hat in zip(splice.hooks_out, y_hats)]


def _replace_hook(y_hat_NO: torch.Tensor, keep_BT: torch.Tensor) -> Callable:
    def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
        y_hat = y_hat_NO.reshape(*act.shape[:-1], -1).to(act.device, act.dtype)
        return torch.where(keep_BT[..., None], y_hat, act)

    return replace


def _zero_hook(keep_BT: torch.Tensor) -> Callable:
    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.where(keep_BT[..., None], torch.zeros_like(act), act)

    return zero


def _one_pass_hooks(splice: Splice, keep_BT: torch.Tensor) -> list[tuple[str, Callable]]:
    """Hooks replacing each output hook by the dictionary's reconstruction from its one input hook
    (read as the forward runs), at kept positions."""
    (hook_in,) = splice.hooks_in
    captured: dict[str, list[torch.Tensor]] = {}
    sae_device = splice.sae.W_dec_FO.device

    def capture(act: torch.Tensor, hook: Any) -> torch.Tensor:
        captured["x"] = act
        return act

    def replace_at(index: int, hook_out: str) -> Callable:
        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            x = act if hook_out == hook_in else captured.get("x")
            if x is None:
                raise RuntimeError(f"hook {hook_in!r} did not run before {hook_out!r}")
            if "y" not in captured:
                captured["y"] = splice.sae.reconstruct([x.reshape(-1, x.shape[-1]).to(sae_device, torch.float32)])
            y_hat = captured["y"][index].reshape(*act.shape[:-1], -1).to(act.device, act.dtype)
            return torch.where(keep_BT[..., None], y_hat, act)

        return replace

    hooks = [(hook_out, replace_at(i, hook_out)) for i, hook_out in enumerate(splice.hooks_out)]
    return hooks if splice.hooks_out == (hook_in,) else [(hook_in, capture), *hooks]


def lm_metrics(model: "TransformerBridge", sae: "SAE", hook_in: str, hook_out: str, contexts_NT: torch.Tensor,
               keep_fn: Callable[[torch.Tensor], torch.Tensor], batch_contexts: int = 8) -> dict[str, float]:
    """Clean, spliced and zero-ablated next-token CE, CE recovered, delta LM loss and KL of one SAE."""
    return LMEvaluator(model, contexts_NT, keep_fn, batch_contexts)([Splice(sae, hook_in, hook_out)])[0]
