"""Feature activations of an SAE on a piece of text (live inference for the server and notebooks).

Text is tokenized the way training contexts were: the model's BOS token first, no other special
tokens. Positions holding special tokens get activation 0 (they are excluded from training).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from saes.activations import stop_at_layer
from saes.data import bos_token_id
from saes.models import load_model
from saes.resolve import resolve_sae
from saes.sae.base import SAE
from saes.sae.formats import load_sae


@dataclass
class TextActivations:
    """Per-token feature activations of one text."""

    tokens: list[str]
    """Token strings, BOS first."""
    acts_TF: torch.Tensor
    """``[T, F]`` activations (0 at special-token positions)."""


class LiveSAE:
    """A model and one of its SAEs, loaded once, turning text into feature activations. Model,
    hook and BOS token come from the SAE's metadata (:func:`saes.resolve.resolve_sae`)."""

    def __init__(self, sae_path: str | Path, device: str = "cpu"):
        target = resolve_sae(sae_path, need_data=False)
        self.sae: SAE = load_sae(target.sae_dir, device=device).eval()
        self.hook = target.hook_in
        self.model = load_model(target.model.source, device=device, dtype="float32")
        self.tokenizer = self.model.tokenizer
        self.bos_id = bos_token_id(self.tokenizer, target.model.get("bos_token"))
        self.excluded = torch.tensor(sorted(set(self.tokenizer.all_special_ids) | {self.bos_id}))
        self.stop = stop_at_layer([self.hook], self.model.cfg.n_layers)
        self.lock = threading.Lock()
        """One forward at a time: the server calls from its thread pool, and hooks added by one
        thread's ``run_with_cache`` would capture another thread's activations."""

    @torch.inference_mode()
    def activations(self, text: str) -> TextActivations:
        ids = [self.bos_id] + self.tokenizer(text, add_special_tokens=False).input_ids
        tokens_1T = torch.tensor([ids], device=self.sae.W_dec_FO.device)
        with self.lock:
            _, cache = self.model.run_with_cache(tokens_1T, names_filter=[self.hook], stop_at_layer=self.stop)
        acts_TF = self.sae.encode(cache[self.hook][0].float())
        acts_TF[torch.isin(tokens_1T[0], self.excluded.to(tokens_1T.device))] = 0
        return TextActivations([self.tokenizer.decode([i]) for i in ids], acts_TF.cpu())
