"""Reconstruction metrics of an SAE on held-out activations, and its feature-density histogram.

Definitions (one place for each):
- explained variance = 1 - sum||y - y_hat||^2 / sum||y - mean(y)||^2, sums over every held-out
  token and dimension, mean over tokens per dimension (FVU = 1 - explained variance); y is the
  SAE's target (its input x for an SAE, the output hook for a transcoder).
- MSE = sum||y - y_hat||^2 / (tokens * d_out): mean squared error per activation element.
- L0 = mean number of non-zero latents per token.
- dead fraction = latents that never fire on the held-out tokens; dense fraction = latents firing
  on more than 10% of them. Feature density = a latent's firing rate (fraction of tokens); its
  histogram is over log10(density) of the latents that fire at least once.
- LM metrics (CE, KL): see ``saes.evaluate.lm``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from saes.sae.base import SAE

DENSE_THRESHOLD = 0.1
"""A latent firing on more than this fraction of held-out tokens counts as dense."""
HISTOGRAM_BIN_WIDTH = 0.5
"""Width of the feature-density histogram bins, in log10 units."""


@torch.no_grad()
def reconstruction_metrics(sae: "SAE", x_ND: torch.Tensor, y_ND: torch.Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """Explained variance, MSE, L0, dead/dense fractions, and per-latent firing counts ``[F]``
    (key ``firing_counts``, a tensor) of ``sae`` on inputs ``x_ND`` with targets ``y_ND``."""
    if x_ND.shape[1] != sae.d_in or y_ND.shape[1] != sae.d_out:
        from saes.sae.compat import SAEMismatchError

        raise SAEMismatchError(f"the SAE maps d_in={sae.d_in} -> d_out={sae.d_out} but the activations have widths "
                               f"{x_ND.shape[1]} -> {y_ND.shape[1]}")
    n, d_out = y_ND.shape
    mean_D = y_ND.sum(0, dtype=torch.float64) / n
    sq_err = total_var = l0_sum = 0.0
    fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=x_ND.device)
    for i in range(0, n, batch_size):
        acts_BF = sae.encode(x_ND[i : i + batch_size])
        y_BD = y_ND[i : i + batch_size]
        sq_err += (sae.decode(acts_BF) - y_BD).double().pow(2).sum().item()
        total_var += (y_BD.double() - mean_D).pow(2).sum().item()
        active_BF = acts_BF != 0
        fired_F += active_BF.sum(0)
        l0_sum += active_BF.sum().item()
    density_F = fired_F.double() / n
    return {
        "explained_variance": 1.0 - sq_err / total_var,
        "mse": sq_err / (n * d_out),
        "l0": l0_sum / n,
        "dead_fraction": (fired_F == 0).double().mean().item(),
        "dense_fraction": (density_F > DENSE_THRESHOLD).double().mean().item(),
        "eval_tokens": n,
        "firing_counts": fired_F.cpu(),
    }


def log10_density(firing_counts_F: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """log10 firing rate per latent ``[F]`` (never-firing latents get log10(1e-10) = -10)."""
    return torch.log10(firing_counts_F.double() / n_tokens + 1e-10).float()


def density_histogram(firing_counts_F: torch.Tensor, n_tokens: int) -> dict[str, Any]:
    """Histogram of log10 feature density over the latents that fired at least once.

    Bins are ``HISTOGRAM_BIN_WIDTH`` wide, from the lowest measurable rate (1 / n_tokens, rounded
    down to a bin edge) to 0 (fires on every token). Returns ``bin_edges`` (len bins + 1),
    ``counts`` (latents per bin), ``dead`` (latents never firing, not in the bins) and
    ``n_tokens``.
    """
    fired = firing_counts_F[firing_counts_F > 0].double()
    low = math.floor(math.log10(1.0 / n_tokens) / HISTOGRAM_BIN_WIDTH) * HISTOGRAM_BIN_WIDTH
    n_bins = round(-low / HISTOGRAM_BIN_WIDTH)
    edges = [low + i * HISTOGRAM_BIN_WIDTH for i in range(n_bins + 1)]
    log_rate = torch.log10(fired / n_tokens)
    index = ((log_rate - low) / HISTOGRAM_BIN_WIDTH).floor().long().clamp(0, n_bins - 1)  # rate 1 -> last bin
    counts = torch.bincount(index, minlength=n_bins)
    return {"bin_edges": edges, "counts": counts.tolist(), "dead": int((firing_counts_F == 0).sum()), "n_tokens": n_tokens}


def position_summary(contexts_NT: torch.Tensor, keep_fn: Callable[[torch.Tensor], torch.Tensor],
                     excluded_tokens: list[str]) -> dict[str, Any]:
    """Which token positions the metrics leave out, for the report: counts and token strings."""
    keep_NT = keep_fn(contexts_NT)
    return {
        "positions": contexts_NT.numel(),
        "excluded_positions": int((~keep_NT).sum()),
        "excluded_tokens": excluded_tokens,
        "padding_positions": 0,  # contexts are packed from one token stream: no padding
    }


def evaluate(sae: "SAE", x_ND: torch.Tensor, y_ND: torch.Tensor, lm: dict[str, float] | None = None) -> dict[str, Any]:
    """Every held-out metric of one SAE: reconstruction metrics, the feature density histogram
    (key ``density_histogram``), per-latent log10 densities (``log10_density``, a tensor) and the
    LM metrics ``lm`` when given."""
    recon = reconstruction_metrics(sae, x_ND, y_ND)
    counts = recon.pop("firing_counts")
    return {**recon, **(lm or {}), "density_histogram": density_histogram(counts, x_ND.shape[0]),
            "log10_density": log10_density(counts, x_ND.shape[0])}
