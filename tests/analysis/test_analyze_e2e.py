"""The analysis of a small SAE on the real default model, written to a real MongoDB-wire-protocol
server over TCP, checked against brute-force references computed independently: activations from
plain transformers, the SAE's math written out here, top-k / bands / logit effects / neighbours
recomputed over the same tokens."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import saes.analysis.run as run_module
import saes.analysis.stream as stream_module
from saes.analysis.config import register_analyze_configs
from saes.analysis.documents import expand_examples
from saes.analysis.run import run_analysis
from saes.data import iter_documents, iter_token_stream, pack_contexts
from saes.errors import ConfigError
from saes.sae.formats import load_sae
from saes.store import StoreConnectionError, connect, get_dictionary, list_analyses, unpack_array

from ..conftest import REPO
from tests.analysis.conftest import DATA, HOOK

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

register_analyze_configs()
D_SAE, K = 256, 8
N_CONTEXTS, CTX = 48, 128
CHUNK = 200_000  # floats of dense activations per encode chunk: 3 chunks per forward batch
SETTINGS = ["analysis.top_n=8", "analysis.bands=6", "analysis.samples_per_band=3", "analysis.random_samples=4",
            "analysis.reservoir=24", "analysis.batch_contexts=16", f"analysis.tokens={N_CONTEXTS * CTX}"]  # fmt: skip


def analyze_cfg(sae: Path, *overrides: str) -> Any:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("analyze", overrides=[f"sae_path={sae}", "device=cpu", *overrides])


class _Stop(Exception):
    pass


@torch.no_grad()
def hf_block_output(hf_model: Any, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` of a plain transformers model (its forward is
    stopped there; equal to ``hidden_states[layer + 1]``)."""
    captured = []

    def grab(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = hf_model.model.layers[layer].register_forward_hook(grab)
    try:
        hf_model(tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def feature_docs(uri: str, db_name: str, dictionary_id: str) -> tuple[dict[int, dict], Any]:
    db = connect(uri, db_name)
    aid = get_dictionary(db, dictionary_id)["active_analysis_id"]
    docs = {d["index"]: d for d in db.features.find({"dictionary_id": dictionary_id, "analysis_id": aid})}
    return docs, db


@pytest.fixture(scope="module")
def analyzed(make_sae, mongo_uri, smollm, smollm_hf, tmp_path_factory) -> SimpleNamespace:
    run = make_sae(D_SAE, K, name="e2e")
    db_name = f"saes_e2e_{time.time_ns()}"
    cfg = analyze_cfg(run, *SETTINGS, f"mongo_uri='{mongo_uri}'", f"mongo_db={db_name}")
    with pytest.MonkeyPatch.context() as mp:  # several encode chunks per forward batch
        mp.setattr(stream_module, "CHUNK_ELEMENTS", CHUNK)
        summary = run_analysis(cfg, {}, progress=False, model=smollm)
    docs, db = feature_docs(mongo_uri, db_name, summary["dictionary_id"])

    # Brute force: the same contexts through plain transformers and the SAE's math, all at once.
    tokenizer = smollm.tokenizer
    bos = tokenizer.get_vocab()["<|endoftext|>"]
    contexts = pack_contexts(iter_token_stream(iter_documents(OmegaConf.create(DATA)), tokenizer, bos), CTX, bos)
    tokens = torch.stack([c for _, c in zip(range(N_CONTEXTS), contexts)])
    x = torch.cat([hf_block_output(smollm_hf, t, layer=3) for t in tokens.split(16)])
    sae = load_sae(run / "sae")
    with torch.no_grad():
        pre = (x.reshape(-1, 576) - sae.b_dec_O) @ sae.W_enc_DF + sae.b_enc_F
        vals, idx = pre.topk(K, dim=1)
        acts = torch.zeros_like(pre).scatter_(1, idx, vals.clamp_min(0))
    keep = ~torch.isin(tokens, torch.tensor(sorted(set(tokenizer.all_special_ids) | {bos})))
    acts[~keep.reshape(-1)] = 0
    yield SimpleNamespace(run=run, cfg=cfg, summary=summary, docs=docs, db=db, tokens=tokens, keep=keep,
                          acts=acts.reshape(N_CONTEXTS, CTX, D_SAE), sae=sae, tokenizer=tokenizer)  # fmt: skip
    db.client.drop_database(db_name)


def test_writes_exactly_one_document_per_feature(analyzed):
    s = analyzed.summary
    assert sorted(analyzed.docs) == list(range(D_SAE))
    assert analyzed.db.features.count_documents({}) == D_SAE
    (analysis,) = list_analyses(analyzed.db, s["dictionary_id"])
    assert analysis["status"] == "active" and analysis["n_features"] == D_SAE
    stats = analysis["meta"]["stats"]
    assert stats["tokens"] == int(analyzed.keep.sum()) and stats["contexts"] == N_CONTEXTS
    assert stats["alive"] == int((analyzed.acts.reshape(-1, D_SAE) > 0).any(0).sum()) and stats["alive"] > D_SAE // 2
    assert stats["alive"] + stats["dead"] == D_SAE
    assert analysis["meta"]["hook_in"] == HOOK and analysis["meta"]["model"]["source"] == "embedded:smollm2-135m-instruct"
    dictionary = get_dictionary(analyzed.db, s["dictionary_id"])
    assert dictionary["config"]["d_sae"] == D_SAE and dictionary["provenance"]["sae_path"] == str((analyzed.run / "sae").resolve())


def test_counts_density_max_mean_match_brute_force(analyzed):
    acts = analyzed.acts.reshape(-1, D_SAE)
    n_tokens = int(analyzed.keep.sum())
    for f, doc in analyzed.docs.items():
        fired = acts[:, f][acts[:, f] > 0].double()
        assert doc["count"] == fired.numel()
        assert doc["density"] == pytest.approx(fired.numel() / n_tokens)
        if fired.numel():
            assert doc["max_activation"] == pytest.approx(fired.max().item(), rel=1e-4)
            assert doc["mean_activation"] == pytest.approx(fired.mean().item(), rel=1e-4)
            assert unpack_array(doc["histogram"]["counts"]).sum() == fired.numel()


def test_top_contexts_equal_brute_force_top_k(analyzed):
    acts, tokens = analyzed.acts, analyzed.tokens
    flat = acts.reshape(-1, D_SAE)
    checked = 0
    for f, doc in analyzed.docs.items():
        n = min(8, doc["count"])
        expected = flat[:, f].topk(n).values if n else torch.zeros(0)
        examples = expand_examples(doc["top"], doc["strings"])
        assert len(examples) == n
        got = torch.tensor([e["value"] for e in examples])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # values, largest first
        for e in examples:
            c, p = e["context"], e["position"]
            assert acts[c, p, f].item() == pytest.approx(e["value"], rel=1e-4, abs=1e-4)  # where it really fired
            assert acts[c, p, f] >= expected[-1] - 1e-3  # and it belongs to the top n
            lo, hi = max(0, p - 16), min(CTX, p + 9)
            ids = tokens[c, lo:hi].tolist()
            assert e["tokens"] == [analyzed.tokenizer.decode([i]) for i in ids]  # the stored text
            assert e["tokens"][e["center"]] == analyzed.tokenizer.decode([tokens[c, p].item()])
            torch.testing.assert_close(torch.tensor(e["acts"]).float(), acts[c, lo:hi, f], rtol=2e-3, atol=2e-3)
            checked += 1
    assert checked > 100


def test_quantile_bands_partition_the_firings(analyzed):
    flat = analyzed.acts.reshape(-1, D_SAE)
    n_multi = 0
    for f, doc in analyzed.docs.items():
        bands = doc["bands"]
        if doc["count"] == 0:
            assert bands == []
            continue
        assert 1 <= len(bands) <= 6
        n_multi += len(bands) > 1
        assert sum(b["count"] for b in bands) == doc["count"]
        assert sum(b["fraction"] for b in bands) == pytest.approx(1.0)
        assert bands[0]["lo"] == pytest.approx(doc["min_activation"]) and bands[-1]["hi"] == pytest.approx(doc["max_activation"])
        fired = flat[:, f][flat[:, f] > 0].double().numpy()
        for i, b in enumerate(bands):
            assert b["count"] > 0 and b["lo"] < b["hi"] or len(bands) == 1
            if i + 1 < len(bands):
                assert b["hi"] == bands[i + 1]["lo"]  # contiguous: every firing is in exactly one band
            last = i + 1 == len(bands)
            inside = (fired >= b["lo"]) & ((fired <= b["hi"]) if last else (fired < b["hi"]))
            near_edge = (np.abs(fired - b["lo"]) < 1e-4 * b["lo"]) | (np.abs(fired - b["hi"]) < 1e-4 * b["hi"])
            assert abs(int(inside.sum()) - b["count"]) <= int(near_edge.sum())
            for e in expand_examples(b["examples"], doc["strings"]):
                assert b["lo"] - 1e-4 <= e["value"] <= b["hi"] + 1e-4
                assert flat[e["context"] * CTX + e["position"], f].item() == pytest.approx(e["value"], rel=1e-4)
            assert len(unpack_array(b["examples"]["value"])) <= 3
    assert n_multi > 20


def test_random_examples_are_real_firings(analyzed):
    acts = analyzed.acts
    for f, doc in analyzed.docs.items():
        examples = expand_examples(doc["random"], doc["strings"])
        assert len(examples) == min(4, doc["count"])
        for e in examples:
            assert acts[e["context"], e["position"], f].item() == pytest.approx(e["value"], rel=1e-4) and e["value"] > 0


def test_logit_effects_match_a_direct_computation(analyzed, smollm_hf):
    W_dec = analyzed.sae.W_dec_FO.detach()
    with torch.no_grad():  # the HF model's own final RMSNorm weight and lm_head
        effects = (W_dec * smollm_hf.model.norm.weight) @ smollm_hf.lm_head.weight.T
    top, bottom = effects.topk(10, dim=1), effects.topk(10, dim=1, largest=False)
    for f, doc in analyzed.docs.items():
        torch.testing.assert_close(torch.from_numpy(unpack_array(doc["logits"]["top"]["values"])), top.values[f], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(unpack_array(doc["logits"]["bottom"]["values"])), bottom.values[f], rtol=1e-4, atol=1e-4)
        assert unpack_array(doc["logits"]["top"]["ids"]).tolist() == top.indices[f].tolist()
        assert doc["logits"]["bottom"]["tokens"] == [analyzed.tokenizer.decode([i]) for i in bottom.indices[f].tolist()]


def test_nearest_neighbours_by_decoder_cosine(analyzed):
    W = analyzed.sae.W_dec_FO.detach().double()
    cos = (W @ W.T) / (W.norm(dim=1)[:, None] * W.norm(dim=1)[None, :])
    cos.fill_diagonal_(-2)
    top = cos.topk(10, dim=1)
    for f, doc in analyzed.docs.items():
        assert unpack_array(doc["neighbours"]["index"]).tolist() == top.indices[f].tolist()
        np.testing.assert_allclose(unpack_array(doc["neighbours"]["cosine"]), top.values[f].numpy(), atol=1e-5)


def test_rerun_replaces_the_analysis_with_identical_documents(analyzed, smollm, mongo_uri):
    s = analyzed.summary
    with pytest.MonkeyPatch.context() as mp:  # the same chunks: ties between equal activations break alike
        mp.setattr(stream_module, "CHUNK_ELEMENTS", CHUNK)
        again = run_analysis(analyzed.cfg, {}, progress=False, model=smollm)
    assert again["dictionary_id"] == s["dictionary_id"] and again["analysis_id"] != s["analysis_id"]
    docs, db = feature_docs(mongo_uri, analyzed.cfg.mongo_db, s["dictionary_id"])
    assert db.features.count_documents({}) == D_SAE  # replaced, not duplicated
    assert db.dictionaries.count_documents({}) == 1
    assert {a["status"] for a in list_analyses(db, s["dictionary_id"])} == {"active", "deleted"}
    strip = ("_id", "analysis_id")
    for f in range(D_SAE):  # the same seed and tokens give the same documents
        assert {k: v for k, v in docs[f].items() if k not in strip} == {k: v for k, v in analyzed.docs[f].items() if k not in strip}


def test_d_in_mismatch_fails_before_any_forward(make_sae, smollm, mongo_uri, db_name, monkeypatch):
    run = make_sae(32, 4, d_in=64, name="narrow")
    monkeypatch.setattr(smollm, "run_with_cache", lambda *a, **k: pytest.fail("a forward ran"))
    with pytest.raises(ConfigError, match=r"d_in=64.*blocks\.3\.hook_resid_post.*width 576"):
        run_analysis(analyze_cfg(run, f"mongo_uri='{mongo_uri}'", f"mongo_db={db_name}"), {}, progress=False, model=smollm)
    db = connect(mongo_uri, db_name)
    assert db.dictionaries.count_documents({}) == 0 and db.features.count_documents({}) == 0


def test_unreachable_database_fails_fast_naming_the_uri(make_sae, monkeypatch):
    run = make_sae(32, 4, name="nodb")
    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(StoreConnectionError, match=r"mongodb://127\.0\.0\.1:1 within 5 s") as info:
        run_analysis(analyze_cfg(run, "mongo_uri=mongodb://127.0.0.1:1"), {}, progress=False)
    assert "Timeout: 5.0s" in str(info.value.__cause__)  # one bounded server selection, before any model load


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "saes.analyze", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=full_env)  # fmt: skip


def test_cli_analyzes_into_the_database_given_by_mongo_uri(make_sae, mongo_uri, db_name):
    run = make_sae(64, 4, name="cli")
    out = _cli(f"sae={run}", "analysis.tokens=1024", "device=cpu", env={"MONGO_URI": mongo_uri, "SAES_MONGO_DB": db_name})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "published to mongodb://127.0.0.1" in out.stdout and "64 alive" not in out.stderr
    db = connect(mongo_uri, db_name)
    (dictionary,) = list(db.dictionaries.find())
    assert dictionary["_id"].startswith("cli") and db.features.count_documents({}) == 64


def test_cli_unknown_sae_path_is_one_clear_line(tmp_path):
    out = _cli(f"sae={tmp_path / 'nope'}")
    assert out.returncode == 2
    assert out.stderr.strip() == f"saes.analyze: error: sae={tmp_path / 'nope'}: no such folder; pass a training run " \
                                 "folder (e.g. outputs/train/smollm2-135m_topk/default) or its sae/ folder"
