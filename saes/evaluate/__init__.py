"""Evaluation: held-out reconstruction metrics (``metrics``), spliced-model CE/KL (``lm``), the
evaluations during training (``held_out``) and the ``python -m saes.evaluate`` command (``run``,
``report``, ``config``, ``__main__``)."""
