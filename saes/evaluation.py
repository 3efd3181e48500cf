"""Metrics of an SAE on held-out activations and in the spliced language model.

Definitions (one place for each):
- explained variance = 1 - sum||y - y_hat||^2 / sum||y - mean(y)||^2 over all held-out tokens
  (mean over tokens, per dimension); FVU = 1 - explained variance.
- L0 = mean number of non-zero latents per token.
- dead fraction = latents that never fire on the held-out tokens; dense = firing on > 10% of them.
- CE losses are next-token cross-entropies (nats) averaged over positions whose input token is
  kept (special tokens such as BOS excluded when ``data.exclude_special``); at excluded
  positions the spliced model keeps the clean activation. delta LM loss = CE(spliced) -
  CE(clean); CE recovered = (CE(zero) - CE(spliced)) / (CE(zero) - CE(clean)); KL is
  KL(clean || spliced) of the next-token distributions, averaged over the same positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from saes.sae.base import SAE

DENSE_THRESHOLD = 0.1


@torch.no_grad()
def reconstruction_metrics(sae: "SAE", x_ND: torch.Tensor, y_ND: torch.Tensor, batch_size: int = 4096) -> dict[str, float | torch.Tensor]:
    """Explained variance, MSE, L0, dead/dense fractions and per-latent firing counts."""
    if x_ND.shape[1] != sae.d_in or y_ND.shape[1] != sae.d_out:
        from saes.sae.compat import SAEMismatchError

        raise SAEMismatchError(f"the SAE maps d_in={sae.d_in} -> d_out={sae.d_out} but the activations have widths "
                               f"{x_ND.shape[1]} -> {y_ND.shape[1]}")
    sq_err = 0.0
    fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=x_ND.device)
    l0_sum = 0.0
    for i in range(0, x_ND.shape[0], batch_size):
        acts_BF = sae.encode(x_ND[i : i + batch_size])
        y_hat = sae.decode(acts_BF)
        sq_err += (y_hat - y_ND[i : i + batch_size]).pow(2).sum().item()
        active = acts_BF != 0
        fired_F += active.sum(0)
        l0_sum += active.sum().item()
    n = x_ND.shape[0]
    total_var = (y_ND - y_ND.mean(0)).pow(2).sum().item()
    density_F = fired_F.float() / n
    return {
        "explained_variance": 1.0 - sq_err / total_var,
        "mse": sq_err / (n * y_ND.shape[1]),
        "l0": l0_sum / n,
        "dead_fraction": (fired_F == 0).float().mean().item(),
        "dense_fraction": (density_F > DENSE_THRESHOLD).float().mean().item(),
        "eval_tokens": n,
        "firing_counts": fired_F.cpu(),
    }


def log10_density(firing_counts_F: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """log10 firing rate per latent (-inf-free: never-firing latents get log10(1e-10))."""
    return torch.log10(firing_counts_F.float() / n_tokens + 1e-10)


def _ce_and_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, keep_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = logits_BTV[:, :-1].float().log_softmax(-1)
    ce_BT = -logprobs.gather(-1, tokens_BT[:, 1:, None]).squeeze(-1)
    mask = keep_BT[:, :-1]
    return ce_BT[mask], logprobs[mask]


@torch.no_grad()
def lm_metrics(
    model: "TransformerBridge",
    sae: "SAE",
    hook_in: str,
    hook_out: str,
    contexts_NT: torch.Tensor,
    keep_fn: Callable[[torch.Tensor], torch.Tensor],
    batch_contexts: int = 8,
) -> dict[str, float]:
    """Clean, spliced and zero-ablated next-token CE, CE recovered, delta LM loss and KL."""
    from saes.sae.compat import check_sae_fits

    check_sae_fits(sae, model.cfg, hook_in, hook_out)  # before any forward
    device = next(model.parameters()).device
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl": 0.0}
    count = 0
    captured: dict[str, torch.Tensor] = {}

    def capture(act, hook):
        captured["x"] = act
        return act

    for i in range(0, contexts_NT.shape[0], batch_contexts):
        tokens = contexts_NT[i : i + batch_contexts].to(device)
        keep = keep_fn(tokens)

        def splice(act, hook):
            x = captured.get("x", act)
            y_hat = sae(x.reshape(-1, x.shape[-1]).float()).reshape(act.shape).to(act.dtype)
            return torch.where(keep[..., None], y_hat, act)

        def zero(act, hook):
            return torch.where(keep[..., None], torch.zeros_like(act), act)

        clean_logits = model(tokens, return_type="logits")
        hooks_spliced = [(hook_out, splice)] if hook_in == hook_out else [(hook_in, capture), (hook_out, splice)]
        spliced_logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=hooks_spliced)
        zero_logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(hook_out, zero)])
        ce_clean, lp_clean = _ce_and_logprobs(clean_logits, tokens, keep)
        ce_spliced, lp_spliced = _ce_and_logprobs(spliced_logits, tokens, keep)
        ce_zero, _ = _ce_and_logprobs(zero_logits, tokens, keep)
        sums["ce_clean"] += ce_clean.sum().item()
        sums["ce_spliced"] += ce_spliced.sum().item()
        sums["ce_zero"] += ce_zero.sum().item()
        sums["kl"] += F.kl_div(lp_spliced, lp_clean, log_target=True, reduction="sum").item()
        count += ce_clean.numel()
    out = {name: value / count for name, value in sums.items()}
    out["delta_lm_loss"] = out["ce_spliced"] - out["ce_clean"]
    denom = out["ce_zero"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero"] - out["ce_spliced"]) / denom if denom != 0 else float("nan")
    out["ce_tokens"] = count
    return out
