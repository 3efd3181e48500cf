"""The API's contract beyond its 200 answers: the statuses the OpenAPI document declares per route
(test_fuzz.py checks that the routes answer exactly those), one error body for every status, and
``Allow`` on 405 and ``OPTIONS`` answers, with the UI mounted at ``/`` or not, under CORS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import server.app
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import WRITE_TOKEN

BASE = "/api/dictionaries/{dictionary_id}"
DECLARED = {
    ("GET", "/api/health"): {200, 413, 503},
    ("GET", "/api/dictionaries"): {200, 413, 503},
    ("GET", BASE): {200, 404, 413, 503},
    ("GET", f"{BASE}/features"): {200, 404, 413, 422, 503},
    ("GET", f"{BASE}/features/random"): {200, 404, 413, 503},
    ("GET", f"{BASE}/features/{{index}}"): {200, 404, 413, 422, 503},
    ("GET", f"{BASE}/search"): {200, 404, 413, 422, 503},
    ("GET", f"{BASE}/features/{{index}}/explanation"): {200, 404, 413, 422, 503},
    ("PUT", f"{BASE}/features/{{index}}/explanation"): {200, 400, 401, 403, 404, 413, 422, 503},
    ("POST", f"{BASE}/features/{{index}}/activations"): {200, 400, 404, 409, 413, 422, 503},
    ("POST", f"{BASE}/top-features"): {200, 400, 404, 409, 413, 422, 503},
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
ORIGIN = "http://localhost:24576"  # the default allowed origin (the UI dev server)


def test_openapi_declares_each_routes_statuses_with_one_error_body(client):
    doc = client.get("/openapi.json").json()
    declared = {(m.upper(), path): {int(s) for s in op["responses"]} for path, ops in doc["paths"].items()
                for m, op in ops.items()}  # fmt: skip
    assert declared == DECLARED
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if status != "200":
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                    assert answer["description"] and answer["description"] != "Validation Error"
    body = doc["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["detail"] and body["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's 422 body is not answered


def test_errors_answer_the_error_body(client, analyzed):
    base = f"/api/dictionaries/{analyzed.id}"
    bad = client.get(f"{base}/features", params={"limit": 0, "sort": "$where"})
    assert bad.status_code == 422
    body = bad.json()
    assert set(body) == {"detail", "errors"} and "query.limit" in body["detail"] and "query.sort" in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["query", "sort"], ["query", "limit"]]
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])  # the input is not echoed
    assert client.get("/api/dictionaries/nope").json() == {"detail": "no dictionary 'nope'"}
    assert client.put(f"{base}/features/1/explanation", json={"text": "x"}).json() == {"detail": "missing or wrong X-Write-Token header"}
    unparsable = client.put(f"{base}/features/1/explanation", content=b'{"text": "\xff"}',
                            headers={"X-Write-Token": WRITE_TOKEN, "Content-Type": "application/json"})  # fmt: skip
    assert (unparsable.status_code, unparsable.json()) == (400, {"detail": "There was an error parsing the body"})
    big = client.request("GET", "/api/dictionaries", content=b"x" * 70_000)
    assert (big.status_code, big.json()) == (413, {"detail": "request body over 65536 bytes"})


@pytest.mark.parametrize("body", [b'{"text": "\\ud800"}', b'{"text": 1e309}'])
def test_a_body_the_422_answer_cannot_echo_is_still_422(client, analyzed, body):
    """FastAPI's own 422 handler echoes the input, and a lone surrogate or an infinity cannot be
    written as JSON: it answered 500."""
    url = f"/api/dictionaries/{analyzed.id}/top-features"
    got = client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert got.status_code == 422 and got.json()["errors"][0]["loc"] == ["body", "text"]


def test_numbers_must_be_finite_and_64_bit(client, analyzed):
    url = f"/api/dictionaries/{analyzed.id}/features"
    for name in ("max_activation_min", "max_activation_max", "density_min", "density_max"):
        for value in ("NaN", "inf", "-inf", "1e309"):
            got = client.get(url, params={name: value})
            assert got.status_code == 422 and "finite" in got.json()["detail"], (name, value)
    assert client.get(url, params={"skip": 2**63}).status_code == 422
    page = client.get(url, params={"skip": 2**63 - 1}).json()
    assert page["features"] == [] and page["total"] > 0


@pytest.fixture(params=[True, False], ids=["ui-mounted", "no-ui"])
def app_client(request, scratch, tmp_path, monkeypatch):
    """The app on the scratch database, with a UI build mounted at ``/`` or none (a clone
    without ``ui/dist``)."""
    ui = tmp_path / "dist"
    if request.param:
        ui.mkdir()
        (ui / "index.html").write_text("<!doctype html><title>ui</title>")
    monkeypatch.setattr(server.app, "UI_DIST", ui)
    settings = Settings(MONGO_URI=scratch.uri, SAES_MONGO_DB=scratch.db, SAES_WRITE_TOKEN=WRITE_TOKEN)
    with TestClient(create_app(settings)) as c:
        c.ui = request.param
        yield c


def test_405_and_options_list_the_declared_methods(app_client, scratch):
    doc = app_client.get("/openapi.json").json()
    for template, ops in doc["paths"].items():
        path = template.replace("{dictionary_id}", scratch.id).replace("{index}", "1")
        allow = ", ".join(sorted({m.upper() for m in ops} | {"OPTIONS"}))
        for method in METHODS:
            if method.lower() in ops:
                continue
            got = app_client.request(method, path)
            assert (got.status_code, got.headers.get("allow")) == (405, allow), (method, path)
            if method != "HEAD":
                assert got.json() == {"detail": "Method Not Allowed"}
        options = app_client.options(path)
        assert (options.status_code, options.headers.get("allow"), options.content) == (204, allow, b""), path
    assert app_client.options(f"/api/dictionaries/{scratch.id}/features/1/explanation").headers["allow"] == "GET, OPTIONS, PUT"
    for method in METHODS + ["OPTIONS"]:  # an /api path no route declares, with or without the UI
        got = app_client.request(method, "/api/nope")
        assert got.status_code == 404, method
        if method != "HEAD":
            assert got.json() == {"detail": "Not Found"}
    index = app_client.get("/")
    assert index.status_code == (200 if app_client.ui else 404)
    assert ("<title>ui</title>" in index.text) == app_client.ui


def test_cors_preflight_and_the_guards_answers_carry_cors_headers(client, analyzed):
    url = f"/api/dictionaries/{analyzed.id}/features/1/explanation"
    preflight = client.options(url, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
                                             "Access-Control-Request-Headers": "X-Write-Token"})  # fmt: skip
    assert preflight.status_code == 200 and "PUT" in preflight.headers["access-control-allow-methods"]
    assert client.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}).status_code == 400
    answers = {
        "413": client.post(f"/api/dictionaries/{analyzed.id}/top-features", content=b"x" * 70_000,
                           headers={"Origin": ORIGIN, "Content-Type": "application/json"}),  # fmt: skip
        "405": client.delete(url, headers={"Origin": ORIGIN}),
        "404": client.get("/api/nope", headers={"Origin": ORIGIN}),
        "204": client.options(url, headers={"Origin": ORIGIN}),
    }
    for status, got in answers.items():
        assert str(got.status_code) == status and got.headers.get("access-control-allow-origin") == ORIGIN, status
