import pytest
import torch

from saes.models import ModelLoadError, load_model, model_dir_or_id

from tests.conftest import DEFAULT_MODEL


def test_hub_model_offline_fails_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1 is set"):
        load_model("EleutherAI/pythia-14m")


def test_missing_local_folder_is_reported():
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model("./no/such/checkpoint")


def test_local_checkpoint_folder_loads_the_same_model(smollm):
    folder = model_dir_or_id(DEFAULT_MODEL)
    local = load_model(folder)
    tokens = torch.tensor([[0, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(local(tokens, return_type="logits"), smollm(tokens, return_type="logits"))
    # the embedded model is the real pretrained SmolLM2: it knows the capital of France
    with torch.no_grad():
        next_token = smollm(tokens, return_type="logits")[0, -1].argmax().item()
    assert smollm.tokenizer.decode([next_token]).strip() == "Paris"
