"""Shared fixtures. Tests run offline: nothing is downloaded from the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm():
    """The real default model (SmolLM2-135M-Instruct) as a TransformerBridge on CPU."""
    from saes.models import load_model

    return load_model(DEFAULT_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm_hf():
    """The same checkpoint as a plain Hugging Face model (an independent reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    from saes.models import model_dir_or_id

    return AutoModelForCausalLM.from_pretrained(
        model_dir_or_id(DEFAULT_MODEL), dtype=torch.float32, attn_implementation="eager"
    ).eval()
