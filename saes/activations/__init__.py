"""Activations: model forwards -> ``{hook: [N, D]}`` rows, the shuffle buffer, and the
``ActivationStream`` interface the training loop reads from (``model_stream`` is one source).

Modules: ``hooks`` (hook names, layers, widths), ``forward`` (``ModelForwards``), ``buffer``
(``ShuffleBuffer``), ``prefetch`` (producers run ahead in a thread), ``stream`` (the interface),
``shuffled`` (the base of buffered streams: prefetching, exact resume), ``model_stream`` (corpus ->
forwards -> buffer -> batches) and ``cache/`` (rows written once to disk, read back by
``CacheStream``).
"""

from saes.activations.buffer import ShuffleBuffer
from saes.activations.forward import ModelForwards, keep_mask
from saes.activations.hooks import HookError, hook_layer, hook_width, stop_at_layer, validate_hooks
from saes.activations.stream import Activations, ActivationStream

__all__ = ["Activations", "ActivationStream", "HookError", "ModelForwards", "ShuffleBuffer", "hook_layer", "hook_width",
           "keep_mask", "stop_at_layer", "validate_hooks"]
