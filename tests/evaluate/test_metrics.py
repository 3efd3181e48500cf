"""Every metric against values computed by hand or by an independent reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from saes.evaluate.metrics import density_histogram, position_summary, reconstruction_metrics
from saes.evaluate.lm import LMEvaluator, Splice, lm_metrics
from saes.sae import build

HOOK = "blocks.3.hook_resid_post"


def _topk(W_enc_DF, W_dec_FO, k, b_enc_F=None, b_dec_O=None):
    d_in, d_sae = W_enc_DF.shape
    sae = build({"architecture": "topk", "d_sae": d_sae, "k": k}, d_in=d_in)
    with torch.no_grad():
        sae.W_enc_DF.copy_(W_enc_DF)
        sae.W_dec_FO.copy_(W_dec_FO)
        sae.b_enc_F.copy_(b_enc_F if b_enc_F is not None else torch.zeros(d_sae))
        sae.b_dec_O.copy_(b_dec_O if b_dec_O is not None else torch.zeros(d_in))
    return sae.eval()


def _identity_sae(d: int):
    """TopK with latents (x, -x) and k = d: the d largest of them are |x_i|, so x_hat == x exactly."""
    eye = torch.eye(d)
    return _topk(torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), k=d)


def test_reconstruction_metrics_match_hand_computed_values():
    # latents: +x0, +x1, -x0, -x1 and two that never win; k = 1 keeps the largest
    eye = torch.eye(2)
    W_enc = torch.cat([eye, -eye, torch.zeros(2, 2)], 1)
    W_dec = torch.cat([eye, -eye, torch.ones(2, 2)], 0)
    sae = _topk(W_enc, W_dec, k=1)
    x = torch.tensor([[3.0, 0.0], [0.0, -2.0], [1.0, 2.0], [-1.0, 0.5]])
    # x_hat: [3,0] [0,-2] [0,2] [-1,0] -> squared errors 0, 0, 1, 0.25
    # mean [0.75, 0.125]; sum of squared deviations 8.75 + 8.1875 = 16.9375
    m = reconstruction_metrics(sae, x, x, batch_size=3)  # two batches
    assert m["explained_variance"] == pytest.approx(1 - 1.25 / 16.9375)
    assert m["mse"] == pytest.approx(1.25 / 8)
    assert m["l0"] == 1.0
    assert m["firing_counts"].tolist() == [1, 1, 1, 1, 0, 0]
    assert m["dead_fraction"] == pytest.approx(2 / 6)
    assert m["dense_fraction"] == pytest.approx(4 / 6)  # each fires on 25% > 10% of tokens
    assert m["eval_tokens"] == 4


def test_explained_variance_of_the_mean_predictor_is_zero():
    x = torch.randn(50, 3)
    sae = _topk(torch.zeros(3, 4), torch.zeros(4, 3), k=1, b_dec_O=x.mean(0))  # always outputs the mean
    m = reconstruction_metrics(sae, x, x)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] == 0 and m["dead_fraction"] == 1.0


def test_density_histogram_bins_log10_firing_rates():
    counts = torch.tensor([0, 1, 3, 10, 100, 1000, 0])  # over 1000 tokens
    h = density_histogram(counts, 1000)
    # rates 1e-3 (-3), 3e-3 (-2.52), 1e-2 (-2), 1e-1 (-1), 1 (0: closes the last bin); 2 never fire
    assert h["bin_edges"] == [-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0]
    assert h["counts"] == [2, 0, 1, 0, 1, 1]
    assert h["dead"] == 2 and h["n_tokens"] == 1000


def test_position_summary_counts_excluded_positions():
    tokens = torch.tensor([[0, 5, 6, 0, 7], [0, 8, 9, 9, 9]])
    summary = position_summary(tokens, lambda t: t != 0, ["<bos>"])
    assert summary == {"positions": 10, "excluded_positions": 3, "excluded_tokens": ["<bos>"], "padding_positions": 0}


class _ToyLM:
    """A model whose hook ``h`` carries the token embedding E[t] and whose logits are h @ U, so
    every loss can be written down by hand."""

    E = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    U = torch.tensor([[1.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    cfg = SimpleNamespace(model_name="toy", d_model=2)  # hook "h" has no known width: not checked

    def __init__(self):
        self.forwards = 0

    def parameters(self):
        yield self.U

    def __call__(self, tokens, return_type="logits"):
        return self.run_with_hooks(tokens, return_type=return_type, fwd_hooks=[])

    def run_with_hooks(self, tokens, return_type="logits", fwd_hooks=()):
        self.forwards += 1
        act = self.E[tokens]
        for name, fn in fwd_hooks:
            assert name == "h"
            act = fn(act, hook=None)
        return act @ self.U


def _log_softmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def test_lm_metrics_match_hand_computed_ce_and_kl():
    lm = _ToyLM()
    c = torch.tensor([0.5, -0.5])
    sae = _topk(torch.zeros(2, 2), torch.zeros(2, 2), k=1, b_dec_O=c)  # reconstructs every token as c
    tokens = torch.tensor([[0, 1, 2, 1], [2, 0, 0, 1]])
    keep = lambda t: t != 0  # noqa: E731  token 0 plays BOS: excluded, its activation left clean
    # kept positions with a next token: (0,1)->2, (0,2)->1, (1,0)->0
    pairs = [(1, 2), (2, 1), (2, 0)]  # (input token, target)
    E, U = _ToyLM.E.tolist(), _ToyLM.U.tolist()

    def logits(h):
        return [sum(h[d] * U[d][v] for d in range(2)) for v in range(3)]

    clean = [_log_softmax(logits(E[t])) for t, _ in pairs]
    spliced = _log_softmax(logits(c.tolist()))
    ce_clean = -sum(lp[y] for lp, (_, y) in zip(clean, pairs)) / 3
    ce_spliced = -sum(spliced[y] for _, y in pairs) / 3
    ce_zero = math.log(3)  # zero activation: uniform logits
    kl = sum(sum(math.exp(a) * (a - b) for a, b in zip(lp, spliced)) for lp in clean) / 3

    m = lm_metrics(lm, sae, "h", "h", tokens, keep, batch_contexts=1)
    assert m["ce_tokens"] == 3
    assert m["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
    assert m["ce_spliced"] == pytest.approx(ce_spliced, rel=1e-5)
    assert m["ce_zero"] == pytest.approx(ce_zero, rel=1e-5)
    assert m["delta_lm_loss"] == pytest.approx(ce_spliced - ce_clean, rel=1e-5)
    assert m["ce_recovered"] == pytest.approx((ce_zero - ce_spliced) / (ce_zero - ce_clean), rel=1e-5)
    assert m["kl"] == pytest.approx(kl, rel=1e-5)


def test_periodic_evaluator_reuses_clean_and_zero_forwards():
    lm = _ToyLM()
    tokens = torch.tensor([[0, 1, 2, 1], [2, 0, 0, 1]])
    sae_a = _identity_sae(2)
    sae_b = _topk(torch.zeros(2, 2), torch.zeros(2, 2), k=1)
    evaluator = LMEvaluator(lm, tokens, lambda t: t != 0, batch_contexts=1, cache_clean_logprobs=True)
    first = evaluator([Splice(sae_a, "h", "h"), Splice(sae_b, "h", "h")])
    assert lm.forwards == 2 * (1 + 1 + 2)  # per batch: clean, zero, one per SAE
    again = evaluator([Splice(sae_b, "h", "h")])
    assert lm.forwards == 8 + 2  # only the spliced forwards
    assert again[0] == first[1]
    assert first[0]["delta_lm_loss"] == 0 and first[0]["kl"] == pytest.approx(0, abs=1e-7)
    assert first[1]["ce_spliced"] == pytest.approx(first[1]["ce_zero"])  # zero reconstruction = zero ablation


# -- the real default model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_tokens(smollm):
    """Two held-out contexts of real text (32 tokens each) and the BOS-excluding mask."""
    from saes.config import DataConfig
    from saes.data import load_corpus
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(DataConfig(source="pydocs", context_size=32, holdout_tokens=2048))
    corpus = load_corpus(cfg, smollm.tokenizer, "<|endoftext|>")
    tokens = corpus.heldout_contexts(64)
    special = corpus.special_ids()
    return tokens, lambda t: ~torch.isin(t, special.to(t.device))


def test_identity_sae_spliced_in_changes_nothing(smollm, text_tokens):
    tokens, keep = text_tokens
    m = lm_metrics(smollm, _identity_sae(576), HOOK, HOOK, tokens, keep)
    assert m["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_zero"] > m["ce_clean"] + 1  # the splice point matters: zeroing it hurts a lot


def test_zero_reconstruction_gives_the_zero_ablation_loss_of_an_independent_reference(smollm, smollm_hf, text_tokens):
    tokens, keep = text_tokens
    zero_sae = _topk(torch.zeros(576, 8), torch.zeros(8, 576), k=1)
    m = lm_metrics(smollm, zero_sae, HOOK, HOOK, tokens, keep)
    assert m["ce_spliced"] == pytest.approx(m["ce_zero"], abs=1e-6)
    assert m["ce_recovered"] == pytest.approx(0.0, abs=1e-6)

    # reference: plain transformers, layer 3's output zeroed at kept positions by a torch hook
    keep_BT = keep(tokens)

    def zero_layer(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.where(keep_BT[..., None], torch.zeros_like(hidden), hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with torch.no_grad():
        clean = smollm_hf(tokens).logits
        handle = smollm_hf.model.layers[3].register_forward_hook(zero_layer)
        try:
            zeroed = smollm_hf(tokens).logits
        finally:
            handle.remove()
    mask = keep_BT[:, :-1]
    targets = tokens[:, 1:][mask]
    lp_clean = clean[:, :-1][mask].log_softmax(-1)
    lp_zero = zeroed[:, :-1][mask].log_softmax(-1)
    ce = lambda lp: -lp.gather(1, targets[:, None]).mean().item()  # noqa: E731
    assert m["ce_clean"] == pytest.approx(ce(lp_clean), abs=1e-4)
    assert m["ce_zero"] == pytest.approx(ce(lp_zero), abs=1e-4)
    kl = (lp_clean.exp() * (lp_clean - lp_zero)).sum(-1).mean().item()
    assert m["kl"] == pytest.approx(kl, rel=1e-4)
    assert m["ce_tokens"] == int(mask.sum())


def _relu_transcoder(d: int, d_sae: int, seed: int):
    """A ReLU transcoder with random weights whose output clearly depends on its input."""
    g = torch.Generator().manual_seed(seed)
    sae = build({"architecture": "relu", "d_sae": d_sae}, d_in=d, d_out=d)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.randn(d, d_sae, generator=g) * 0.2)
        sae.b_enc_F.copy_(torch.randn(d_sae, generator=g))
        sae.W_dec_FO.copy_(torch.randn(d_sae, d, generator=g) * 0.1)
        sae.b_dec_O.copy_(torch.randn(d, generator=g) * 0.05)
    return sae.eval()


def _hf_transcoder_ce(smollm_hf, sae, tokens, keep_BT, read) -> tuple[float, float]:
    """``(ce_spliced, kl)`` by hand on plain transformers: layer 3's MLP output replaced, at kept
    positions, by ``relu(x W_enc + b_enc) W_dec + b_dec`` of ``x`` = the residual stream before
    layer 3 (``read="pre"``) or after its attention (``"mid"``, the MLP's input before its norm)."""
    layer = smollm_hf.model.layers[3]
    W_enc, b_enc, W_dec, b_dec = (p.detach() for p in (sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FO, sae.b_dec_O))
    seen: dict[str, torch.Tensor] = {}

    def capture_pre(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    def capture_mid(module, args):
        seen["x"] = args[0]

    def replace_mlp(module, args, output):
        y = torch.relu(seen["x"] @ W_enc + b_enc) @ W_dec + b_dec
        return torch.where(keep_BT[..., None], y, output)

    handles = [layer.register_forward_pre_hook(capture_pre, with_kwargs=True) if read == "pre"
               else layer.post_attention_layernorm.register_forward_pre_hook(capture_mid),
               layer.mlp.register_forward_hook(replace_mlp)]
    try:
        with torch.no_grad():
            spliced = smollm_hf(tokens).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        clean = smollm_hf(tokens).logits
    mask = keep_BT[:, :-1]
    targets = tokens[:, 1:][mask]
    lp_spliced = spliced[:, :-1][mask].log_softmax(-1)
    lp_clean = clean[:, :-1][mask].log_softmax(-1)
    ce = -lp_spliced.gather(1, targets[:, None]).mean().item()
    return ce, (lp_clean.exp() * (lp_clean - lp_spliced)).sum(-1).mean().item()


def test_transcoder_splice_reads_one_hook_and_replaces_another(smollm, smollm_hf, text_tokens):
    tokens, keep = text_tokens
    mlp_out = "blocks.3.hook_mlp_out"
    tc = _relu_transcoder(576, 16, seed=0)
    keep_BT = keep(tokens)
    m_mid = lm_metrics(smollm, tc, "blocks.3.hook_resid_mid", mlp_out, tokens, keep)
    m_pre = lm_metrics(smollm, tc, "blocks.3.hook_resid_pre", mlp_out, tokens, keep)
    ce_mid, kl_mid = _hf_transcoder_ce(smollm_hf, tc, tokens, keep_BT, "mid")
    ce_pre, kl_pre = _hf_transcoder_ce(smollm_hf, tc, tokens, keep_BT, "pre")
    assert m_mid["ce_spliced"] == pytest.approx(ce_mid, rel=1e-4)
    assert m_mid["kl"] == pytest.approx(kl_mid, rel=1e-3)
    assert m_pre["ce_spliced"] == pytest.approx(ce_pre, rel=1e-4)
    assert m_pre["kl"] == pytest.approx(kl_pre, rel=1e-3)
    # the same weights on another input hook's activations give another spliced model
    assert abs(ce_mid - ce_pre) > 0.01 and abs(m_mid["ce_spliced"] - m_pre["ce_spliced"]) > 0.01
    assert m_mid["ce_zero"] == m_pre["ce_zero"] > m_mid["ce_clean"]  # the same output hook is ablated
    assert m_mid["kl"] > 1e-3  # the splice changed the model: an all-zero or unread transcoder would not match
