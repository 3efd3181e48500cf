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


def test_an_unusable_device_fails_by_key_before_anything_loads():
    import torch

    from saes.errors import ConfigError
    from saes.models import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda: .*use device=cpu"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match=r"model.device=cuda:0: .*use model.device=cpu"):
            resolve_device("cuda:0", "model.device")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=rf"device=cuda:{n}: {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="device=mps: MPS"):
            resolve_device("mps")
    assert resolve_device("cpu") == "cpu"
