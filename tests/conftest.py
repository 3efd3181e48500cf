"""Shared fixtures. Tests run offline: nothing is downloaded from the Hugging Face hub."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(data dir, URI)`` of one real local MongoDB-wire-protocol server over TCP, on a temp dir,
    shared by every suite of the session; stopped at the end."""
    from saes.store import ServerNotInstalledError, ensure_server, local_server, stop_server

    try:
        local_server.find_backend()
    except ServerNotInstalledError as e:
        if os.environ.get("CI"):
            pytest.fail(f"no MongoDB server for the tests: {e}")
        pytest.skip(f"no local MongoDB server installed: {e}")
    data_dir = tmp_path_factory.mktemp("mongo")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MONGO_URI", raising=False)
        uri = ensure_server(data_dir)
    try:
        yield data_dir, uri
    finally:
        stop_server(data_dir)


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: tuple[Path, str]) -> str:
    """URI of the session's local server."""
    return mongo_server[1]
