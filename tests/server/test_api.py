"""Every route of the feature API against a real MongoDB-wire-protocol server filled by the real
analysis pipeline. Expected values come from the store (read independently with pymongo) or from
the SAE recomputed in the test, never from the server's own code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saes.analysis.documents import expand_examples
from saes.sae.formats import load_sae
from saes.store import connect, unpack_array

from tests.analysis.conftest import MODEL

from tests.server.conftest import D_SAE, DB_NAME, WRITE_TOKEN


@pytest.fixture(scope="module")
def store(analyzed):
    db = connect(analyzed.uri, DB_NAME, create_indexes=False)
    aid = db.dictionaries.find_one({"_id": analyzed.id})["active_analysis_id"]
    docs = {d["index"]: d for d in db.features.find({"dictionary_id": analyzed.id, "analysis_id": aid})}
    yield docs
    db.client.close()


def alive(store) -> list[int]:
    return sorted(i for i, d in store.items() if d["count"] > 0)


def test_health_and_openapi(client):
    assert client.get("/api/health").json() == {"ok": True}
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/dictionaries/{dictionary_id}/search" in paths
    assert "/api/dictionaries/{dictionary_id}/features/{index}/activations" in paths


def test_dictionaries_list_and_one(client, analyzed, store):
    rows = client.get("/api/dictionaries").json()
    row = next(r for r in rows if r["id"] == analyzed.id)
    assert (row["variant"], row["d_sae"], row["site"], row["analyzed"]) == ("topk", D_SAE, "blocks.3.hook_resid_post", True)
    one = client.get(f"/api/dictionaries/{analyzed.id}").json()
    assert one["alive"] == len(alive(store)) and one["n_features"] == D_SAE
    hist = one["density_histogram"]
    assert len(hist["log10_edges"]) == len(hist["counts"]) + 1 and sum(hist["counts"]) == one["alive"]
    assert client.get("/api/dictionaries/nope").status_code == 404


def test_feature_matches_the_store(client, analyzed, store):
    index = max(store, key=lambda i: store[i]["count"])
    doc = store[index]
    got = client.get(f"/api/dictionaries/{analyzed.id}/features/{index}").json()
    assert (got["index"], got["count"], got["d_sae"]) == (index, doc["count"], D_SAE)
    assert got["max_activation"] == pytest.approx(doc["max_activation"])
    top = expand_examples(doc["top"], doc["strings"])
    assert [e["tokens"] for e in got["top"]] == [e["tokens"] for e in top]
    assert [e["value"] for e in got["top"]] == pytest.approx([e["value"] for e in top])
    for e in got["top"]:  # the firing token carries the example's value
        assert e["acts"][e["center"]] == pytest.approx(e["value"], rel=1e-3)
    assert sum(b["count"] for b in got["bands"]) == doc["count"]
    assert got["logits"]["top"][0]["value"] >= got["logits"]["top"][-1]["value"]
    assert [n["index"] for n in got["neighbours"]] == unpack_array(doc["neighbours"]["index"]).tolist()
    assert got["explanation"] is None


def test_unknown_feature_and_bad_parameters(client, analyzed):
    base = f"/api/dictionaries/{analyzed.id}"
    assert client.get(f"{base}/features/{D_SAE}").status_code == 404
    assert client.get("/api/dictionaries/nope/features/0").status_code == 404
    assert client.get(f"{base}/features/abc").status_code == 422
    assert client.get(f"{base}/features", params={"sort": "$where"}).status_code == 422
    assert client.get(f"{base}/features", params={"limit": 0}).status_code == 422
    assert client.get(f"{base}/features", params={"density_min": 2}).status_code == 422
    assert client.get(f"{base}/features", params={"density_min": '{"$gt": 0}'}).status_code == 422
    assert client.get(f"{base}/search", params={"q": ""}).status_code == 422


def test_sorted_filtered_pages(client, analyzed, store):
    base = f"/api/dictionaries/{analyzed.id}/features"
    page = client.get(base, params={"sort": "density", "descending": True, "limit": 10, "skip": 5}).json()
    expected = sorted(store, key=lambda i: (-store[i]["density"], i))[5:15]
    assert page["total"] == D_SAE and [f["index"] for f in page["features"]] == expected
    lo, hi = 0.01, 0.2
    page = client.get(base, params={"sort": "index", "descending": False, "density_min": lo, "density_max": hi,
                                    "limit": 500}).json()  # fmt: skip
    kept = [i for i in sorted(store) if lo <= store[i]["density"] <= hi]
    assert [f["index"] for f in page["features"]] == kept and page["total"] == len(kept)
    first = page["features"][0]
    assert first["count"] == store[kept[0]]["count"] and first["density"] == pytest.approx(store[kept[0]]["density"])


def test_random_feature_is_alive(client, analyzed, store):
    seen = {client.get(f"/api/dictionaries/{analyzed.id}/features/random").json()["index"] for _ in range(8)}
    assert seen <= set(alive(store)) and len(seen) > 1


def test_search_by_logit_and_context_tokens(client, analyzed, store):
    index = alive(store)[0]
    doc = store[index]
    token = doc["logits"]["top"]["tokens"][0]
    hits = client.get(f"/api/dictionaries/{analyzed.id}/search", params={"q": token, "limit": 200}).json()["features"]
    assert any(h["index"] == index and h["matched"] == "logits" for h in hits)
    assert all(token.strip().lower() in " ".join(store[h["index"]]["logits"]["top"]["tokens"]).lower()
               for h in hits if h["matched"] == "logits")  # fmt: skip
    example = expand_examples(doc["top"], doc["strings"])[0]
    max_token = example["tokens"][example["center"]]
    hits = client.get(f"/api/dictionaries/{analyzed.id}/search", params={"q": max_token, "limit": 200}).json()["features"]
    assert index in {h["index"] for h in hits}
    none = client.get(f"/api/dictionaries/{analyzed.id}/search", params={"q": "zzqqxxnotatoken"}).json()
    assert none["features"] == []


def test_explanations_need_the_write_token(client, read_only_client, analyzed):
    url = f"/api/dictionaries/{analyzed.id}/features/3/explanation"
    assert read_only_client.put(url, json={"text": "x"}, headers={"X-Write-Token": WRITE_TOKEN}).status_code == 403
    assert client.put(url, json={"text": "x"}).status_code == 401
    assert client.put(url, json={"text": "x"}, headers={"X-Write-Token": "wrong"}).status_code == 401
    assert client.get(url).json()["text"] is None
    ok = client.put(url, json={"text": "fires on Python keywords"}, headers={"X-Write-Token": WRITE_TOKEN})
    assert ok.status_code == 200
    assert client.get(url).json()["text"] == "fires on Python keywords"
    assert read_only_client.get(f"/api/dictionaries/{analyzed.id}/features/3").json()["explanation"] == "fires on Python keywords"
    missing = client.put(f"/api/dictionaries/{analyzed.id}/features/{D_SAE}/explanation", json={"text": "x"},
                         headers={"X-Write-Token": WRITE_TOKEN})  # fmt: skip
    assert missing.status_code == 404


@pytest.mark.parametrize("index", [D_SAE, -1, 2**63, 399097827171669347663872])
def test_an_index_outside_the_dictionary_is_404_on_every_route(client, analyzed, index):
    base = f"/api/dictionaries/{analyzed.id}/features/{index}"
    token = {"X-Write-Token": WRITE_TOKEN}
    assert client.get(base).status_code == 404
    assert client.get(f"{base}/explanation").status_code == 404
    assert client.put(f"{base}/explanation", json={"text": "x"}, headers=token).status_code == 404
    assert client.post(f"{base}/activations", json={"text": "hi"}).status_code == 404
    assert client.get(f"/api/dictionaries/{analyzed.id}/features/1e3").status_code == 422  # malformed


def test_live_inference_agrees_with_the_analysis(client, analyzed, store, smollm):
    """The top example's window, re-encoded live, activates the feature at its firing token like
    the analysis recorded (the window is shorter than the context, so the value is recomputed here
    from the SAE and model directly as the reference)."""
    index = max(store, key=lambda i: store[i]["max_activation"])
    base = f"/api/dictionaries/{analyzed.id}"
    text = "def load(path):\n    with open(path) as f:\n        return json.load(f)\n"
    got = client.post(f"{base}/features/{index}/activations", json={"text": text}).json()
    sae = load_sae(analyzed.run / "sae").eval()
    bos = smollm.tokenizer.convert_tokens_to_ids(MODEL["bos_token"])  # the BOS the SAE was trained with
    ids = [bos] + smollm.tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        _, cache = smollm.run_with_cache(torch.tensor([ids]), names_filter=["blocks.3.hook_resid_post"])
        expected = sae.encode(cache["blocks.3.hook_resid_post"][0])[:, index]
    expected[0] = 0  # BOS is excluded, as in training and analysis
    assert got["tokens"] == [smollm.tokenizer.decode([i]) for i in ids]
    np.testing.assert_allclose(got["values"], expected.numpy(), rtol=1e-4, atol=1e-4)

    top = client.post(f"{base}/top-features", params={"n": 5}, json={"text": text}).json()
    max_F = sae.encode(cache["blocks.3.hook_resid_post"][0])[1:].max(dim=0).values
    assert [f["index"] for f in top["features"]] == max_F.topk(5).indices.tolist()
    assert top["tokens"] == got["tokens"]


def test_live_inference_limits(client, analyzed):
    base = f"/api/dictionaries/{analyzed.id}"
    assert client.post(f"{base}/features/0/activations", json={"text": "x" * 5000}).status_code == 413
    assert client.post(f"{base}/features/0/activations", json={"text": ""}).status_code == 422
    assert client.post(f"{base}/features/{D_SAE}/activations", json={"text": "hi"}).status_code == 404
    big = client.post(f"{base}/top-features", content=b'{"text": "' + b"a" * 300_000 + b'"}',
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert big.status_code == 413


def test_cors_allows_only_configured_origins(client):
    ok = client.get("/api/dictionaries", headers={"Origin": "http://localhost:24576"})
    assert ok.headers.get("access-control-allow-origin") == "http://localhost:24576"
    bad = client.get("/api/dictionaries", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in bad.headers
