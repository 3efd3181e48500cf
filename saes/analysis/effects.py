"""Weight-based feature properties: logit effects through the unembedding, decoder neighbours.

Logit effect of feature f on token v: ``(c(W_dec[f]) * g) @ W_U[:, v]``, the direct change in the
logits per unit of activation if the final norm's scale is held fixed (as sae_vis and Neuronpedia
show it). ``g`` is the final norm's effective per-dimension gain and ``c`` removes the mean when the
norm centers (LayerNorm) -- both measured on the model's own final-norm module, so RMSNorm,
LayerNorm and Gemma's ``1 + weight`` convention need no special cases. The unembedding bias is a
per-token constant, the same for every feature, and is left out.

Shapes: F features, D model width, V vocabulary, K kept per feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

CHUNK_FEATURES = 256


@torch.no_grad()
def final_norm_gain(model: "TransformerBridge") -> tuple[torch.Tensor, bool]:
    """``(gain_D, centers)`` of the model's final norm (identity when it has none).

    Probed on two zero-mean, unit-RMS sign patterns ``x``: the norm leaves their scale alone, so
    ``(norm(x) - norm(-x)) / 2x`` is the gain (bias cancels); it centers when adding a constant
    to the input changes nothing.
    """
    norm = getattr(model, "ln_final", None)
    W_U = model.W_U
    d, dtype, device = W_U.shape[0], W_U.dtype, W_U.device
    if norm is None:
        return torch.ones(d, dtype=dtype, device=device), False
    x = torch.ones(d, dtype=torch.float64)
    x[1::2] = -1
    if d % 2:
        x[-1] = 0
        x *= (d / (d - 1)) ** 0.5
    y = x.roll(1)
    probes = torch.stack([x, -x, y, -y, x + 3.0]).to(device, dtype)[:, None, :]  # [5, 1, D]
    out = norm(probes).double()[:, 0, :]
    gain_x = (out[0] - out[1]) / (2 * x.to(device))
    gain_y = (out[2] - out[3]) / (2 * y.to(device))
    gain = torch.where(x.to(device) != 0, gain_x, gain_y)
    centers = bool(torch.allclose(out[4], out[0], rtol=1e-3, atol=1e-4 * float(out[0].abs().max())))
    return gain.to(dtype), centers


@torch.no_grad()
def logit_effects(
    W_dec_FO: torch.Tensor, model: "TransformerBridge", k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top_ids_FK, top_values_FK, bottom_ids_FK, bottom_values_FK)``: the k largest and k
    smallest logit effects of every feature (values in descending / ascending order)."""
    W_U_DV = model.W_U.float()
    gain_D, centers = final_norm_gain(model)
    gain_D = gain_D.float().to(W_U_DV.device)
    k = min(k, W_U_DV.shape[1])
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, W_dec_FO.shape[0], CHUNK_FEATURES):
        dirs = W_dec_FO[start : start + CHUNK_FEATURES].to(W_U_DV.device, torch.float32)
        if centers:
            dirs = dirs - dirs.mean(dim=1, keepdim=True)
        effects = (dirs * gain_D) @ W_U_DV
        top = effects.topk(k, dim=1)
        bottom = effects.topk(k, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(4))  # type: ignore[return-value]


@torch.no_grad()
def nearest_neighbours(W_dec_FO: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index_FK, cosine_FK)``: each feature's k most similar other features by decoder cosine."""
    n = W_dec_FO.shape[0]
    k = min(k, n - 1)
    unit = W_dec_FO.float() / W_dec_FO.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    idx, cos = [], []
    for start in range(0, n, chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -float("inf")
        top = sims.topk(k, dim=1)
        idx.append(top.indices)
        cos.append(top.values)
    return torch.cat(idx).cpu(), torch.cat(cos).cpu()
