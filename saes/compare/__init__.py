"""Comparison of finished runs: the table of differing config keys and final metrics (``runs``),
the sparsity-frontier plots (``plots``) and the ``python -m saes.compare`` command."""
