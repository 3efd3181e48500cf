"""Fixtures of the analysis tests: a fresh database on the session's real MongoDB-protocol server
(``mongo_uri`` in tests/conftest.py), and small SAEs for the real default model written as saes checkpoints."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from saes.sae.formats import save_sae
from saes.sae.registry import build
from saes.store import connect

HOOK = "blocks.3.hook_resid_post"
DATA = {"source": "pydocs", "path": None, "subset": None, "split": "train", "text_column": "text", "context_size": 128,
        "holdout_tokens": 50000, "shuffle_seed": 0, "exclude_special": True}  # fmt: skip
MODEL = {"name": "smollm2-135m", "source": "embedded:smollm2-135m-instruct", "n_layers": 30, "d_model": 576,
         "bos_token": "<|endoftext|>", "device": "cpu", "dtype": "float32"}  # fmt: skip


def sae_metadata(hook: str = HOOK, layer: int = 3) -> dict[str, Any]:
    """Metadata as ``saes.train`` writes it (the keys the analysis reads)."""
    return {"model_name": MODEL["source"], "hook_name": hook, "hook_name_out": hook, "context_size": 128,
            "exclude_special_tokens": True, "dataset_path": "pydocs", "status": "finished",
            "config": {"layer": layer, "model": dict(MODEL), "data": dict(DATA)}}  # fmt: skip


@pytest.fixture(scope="session")
def make_sae(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_sae(d_sae, k, d_in=576, seed=0)`` -> a run folder holding ``sae/``: a TopK SAE with
    random unit decoder rows, tied encoder and a small random encoder bias (features of all
    densities fire on real text)."""

    def make(d_sae: int, k: int, d_in: int = 576, seed: int = 0, name: str | None = None) -> Path:
        run = tmp_path_factory.mktemp(name or f"run_{d_sae}_{k}_{d_in}")
        sae = build({"architecture": "topk", "d_sae": d_sae, "k": k}, d_in=d_in)
        gen = torch.Generator().manual_seed(seed)
        sae.initialize(gen)
        with torch.no_grad():
            sae.b_enc_F.copy_(torch.randn(d_sae, generator=gen) * 0.2)
        save_sae(sae, run / "sae", sae_metadata())
        return run

    return make


@pytest.fixture
def db_name(mongo_uri: str) -> Iterator[str]:
    """A fresh database name on the session server, dropped afterwards."""
    name = f"saes_analysis_{uuid.uuid4().hex[:10]}"
    yield name
    db = connect(mongo_uri, name, create_indexes=False)
    db.client.drop_database(name)
    db.client.close()
