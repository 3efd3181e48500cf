"""Splicing a dictionary that reads and writes several hooks (the multi-site interface): its
inputs come from a clean forward, then every output hook is replaced in a second one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saes.activations import keep_mask
from saes.evaluate.lm import LMEvaluator, Splice

HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


class TwoSite(nn.Module):
    """A toy multi-site dictionary: reconstructs each output as ``scale`` x the matching input."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.W_dec_FO = nn.Parameter(torch.zeros(1, 1))  # where the evaluator puts inputs (device)

    def reconstruct(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x * self.scale for x in inputs]


@pytest.fixture(scope="module")
def contexts(smollm):
    ids = smollm.tokenizer("The capital of France is Paris. It is a large city in Europe, on the Seine.").input_ids
    return torch.tensor([ids[:16], ids[1:17]])


def test_identity_at_two_hooks_is_the_clean_model_and_zero_is_the_two_hook_ablation(smollm, contexts):
    keep = lambda tokens: keep_mask(tokens, torch.tensor([smollm.tokenizer.bos_token_id or 0]))  # noqa: E731
    lm = LMEvaluator(smollm, contexts, keep, batch_contexts=2)
    identity, zero = lm([Splice(TwoSite(1.0), HOOKS, HOOKS), Splice(TwoSite(0.0), HOOKS, HOOKS)])
    assert identity["ce_spliced"] == pytest.approx(identity["ce_clean"], abs=1e-5)
    assert identity["kl"] == pytest.approx(0.0, abs=1e-5)
    assert zero["ce_spliced"] == pytest.approx(zero["ce_zero"], abs=1e-5)  # both hooks zeroed, as in the ablation
    # the reference ablation, by hand: zero both hooks at kept positions
    tokens = contexts
    keep_BT = keep(tokens)

    def zero_hook(act, hook):
        return torch.where(keep_BT[..., None], torch.zeros_like(act), act)

    logits = smollm.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(h, zero_hook) for h in HOOKS])
    mask = keep_BT[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][mask].float(), tokens[:, 1:][mask], reduction="mean")
    assert zero["ce_zero"] == pytest.approx(ce.item(), rel=1e-5)
    assert zero["ce_zero"] > identity["ce_clean"] + 1.0
