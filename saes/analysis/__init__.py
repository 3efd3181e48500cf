"""Feature analysis: stream tokens through a model and an SAE, keep per-feature statistics and
examples in bounded memory, and publish one MongoDB document per feature.

Modules: :mod:`~saes.analysis.config` (the ``analysis`` schema), :mod:`~saes.analysis.target`
(SAE, model, hook and data from the SAE's metadata), :mod:`~saes.analysis.stream` (the forward /
encode pass), :mod:`~saes.analysis.accumulate` with :mod:`~saes.analysis.stats` and
:mod:`~saes.analysis.slots` (streaming state), :mod:`~saes.analysis.bands` (quantile bands),
:mod:`~saes.analysis.effects` (logit effects, decoder neighbours), :mod:`~saes.analysis.tokens`
(token texts), :mod:`~saes.analysis.documents` (the stored documents) and
:mod:`~saes.analysis.run` (the whole analysis, used by ``python -m saes.analyze``).
"""
