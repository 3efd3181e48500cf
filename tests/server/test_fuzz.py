"""A fuzzer over every operation of the app's OpenAPI document, on the real app and a real
MongoDB-wire-protocol server: adversarial values in each path, query and header parameter, and
malformed, mistyped and oversized bodies. Every answer must be below 500, declared for its
operation by the document, and shaped as the schema the document declares for that status; and
every status the document declares must be answered by some request, here or in a server state
made for it (read-only, database down, a dictionary without an SAE), so the document declares
exactly what the routes answer."""

from __future__ import annotations

import json
import socket
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient

from server.app import create_app
from server.settings import Settings
from tests.server.conftest import WRITE_TOKEN

VALUES = [
    "399097827171669347663872", "-399097827171669347663872", "7618231044298286039040", str(2**63 - 1), str(2**63),
    str(-(2**63) - 1), "9" * 5000, "-1", "0", "-0", "+1", "1", "127", "128", "1.5", "1e309", "-1e309", "1e3", "NaN",
    "inf", "-inf", "0x10", "1_0", "", " ", "true", "null", "abc", "random", "é", "日本語", "\U0001f600", "\x00",
    "\ufffd", "%", "%00", "../..", "a/b", "$where", '{"$gt": 0}', "x" * 10_000,
]  # fmt: skip
"""Path, query and header values, as sent (integers beyond 64 bits, non-numbers, empty, Unicode...)."""
TEXTS = ["", "\x00", "é" * 3000, "x" * 5000, "\U0001f600", "a" * 2001]
"""Extra values for the string fields of bodies (the limits are 2000 characters live, 4000 written)."""
BODIES = [
    (b"", "application/json"), (b"{", "application/json"), (b"null", "application/json"), (b"[]", "application/json"),
    (b"1", "application/json"), (b'"text"', "application/json"), (b"{}", "application/json"),
    (b'{"text": "\\ud800"}', "application/json"), (b'{"text": "a\\udfff"}', "application/json"),
    (b'{"text": "\xff"}', "application/json"), (b"[" * 30_000, "application/json"), (b'{"text": "hi"}', None),
    (b'{"text": "hi"}', "text/plain"), (b"text=hi", "application/x-www-form-urlencoded"),
    (b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x"), (b'{"text": "hi", "text": 1}', "application/json"),
    (b'{"text": "hi", "extra": [1, 2]}', "application/json"), (b'{"text": 1e309}', "application/json"),
]  # fmt: skip
"""Raw bodies and content types: malformed JSON, invalid UTF-8, lone surrogates, nesting too deep..."""
WRONG_TYPES = [None, 1, 1.5, True, [], {}, ["hi"]]
JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
              "null": type(None)}  # fmt: skip


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any, at: str = "body") -> list[str]:
    """What of ``value`` breaks the JSON ``schema`` (the subset the document uses). A model's
    schema (properties, no ``additionalProperties``) allows no other keys."""
    schema = resolve(doc, schema)
    if "anyOf" in schema:
        return [] if any(not conforms(doc, s, value, at) for s in schema["anyOf"]) else [f"{at}: {value!r:.80} fits no anyOf"]
    kind = schema.get("type")
    if kind and (not isinstance(value, JSON_TYPES[kind]) or (isinstance(value, bool) and kind in ("integer", "number"))):
        return [f"{at}: expected {kind}, got {value!r:.80}"]
    problems = []
    if kind == "object":
        props = schema.get("properties", {})
        problems += [f"{at}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                problems += conforms(doc, props[key], item, f"{at}.{key}")
            elif schema.get("additionalProperties", not props) is False:
                problems.append(f"{at}: undeclared key {key!r}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            problems += conforms(doc, schema["items"], item, f"{at}[{i}]")
    return problems


def example(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A valid value of ``schema`` (an object gets its required properties)."""
    schema = resolve(doc, schema)
    kind = schema.get("type")
    if kind == "object":
        return {k: example(doc, schema["properties"][k]) for k in schema.get("required", [])}
    return {"string": "hello", "integer": 1, "number": 0.5, "boolean": True, "array": []}.get(kind, "hello")


class Operation(SimpleNamespace):
    method: str
    template: str
    spec: dict[str, Any]

    def body_schema(self) -> dict[str, Any] | None:
        return ((self.spec.get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")


def operations(doc: dict[str, Any]) -> list[Operation]:
    return [Operation(method=m.upper(), template=t, spec=spec) for t, ops in doc["paths"].items() for m, spec in ops.items()]


def baseline(doc: dict[str, Any], op: Operation, dictionary_id: str) -> dict[str, Any]:
    """A valid request of ``op``: ``{"path"|"query"|"header": {name: value}, "body": json}``."""
    known = {"dictionary_id": dictionary_id, "index": "1", "x-write-token": WRITE_TOKEN, "q": "a"}
    request: dict[str, Any] = {"path": {}, "query": {}, "header": {}}
    for p in op.spec.get("parameters", []):
        if p["in"] == "path" or p.get("required") or p["name"] in known:
            request[p["in"]][p["name"]] = known.get(p["name"]) or str(example(doc, p["schema"])).lower()
    schema = op.body_schema()
    request["body"] = None if schema is None else json.dumps(example(doc, schema)).encode()
    return request


def variants(doc: dict[str, Any], op: Operation, base: dict[str, Any], max_bytes: int) -> Iterator[tuple[str, dict]]:
    """``(label, request)``: the baseline, then one input changed at a time."""
    yield "baseline", base
    for p in op.spec.get("parameters", []):
        for value in VALUES:
            if p["in"] == "header" and not value.isprintable():
                continue  # not a header value HTTP can carry
            yield f"{p['in']} {p['name']}={value[:40]!r}", {**base, p["in"]: {**base[p["in"]], p["name"]: value}}
    if (schema := op.body_schema()) is not None:
        for content, content_type in BODIES:
            yield f"body {content[:40]!r} ({content_type})", {**base, "body": content, "type": content_type}
        valid = json.loads(base["body"])
        for key, prop in resolve(doc, schema).get("properties", {}).items():
            for value in [*VALUES, *TEXTS, *WRONG_TYPES] if resolve(doc, prop).get("type") == "string" else WRONG_TYPES:
                yield f"body {key}={value!r:.40}", {**base, "body": json.dumps({**valid, key: value}).encode()}
    yield "oversized body", {**base, "body": b'{"text": "' + b"a" * max_bytes + b'"}'}
    yield "chunked body", {**base, "body": iter([b'{"text": ', b'"hi"}']), "type": "application/json"}


def send(client: TestClient, op: Operation, request: dict[str, Any]):
    path = op.template
    for name, value in request["path"].items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    headers = {k: v.encode() for k, v in request["header"].items()}
    body = request.get("body")
    if body is not None:
        headers["Content-Type"] = request.get("type", "application/json") or ""
        headers = {k: v for k, v in headers.items() if v != ""}
    return client.request(op.method, path, params=request["query"], headers=headers, content=body, follow_redirects=False)


def check(doc: dict[str, Any], op: Operation, label: str, response, database_down: bool = False) -> list[str]:
    """What is wrong with ``response``: a 5xx (but 503 with the database down), a status ``op``
    does not declare, a body off its schema."""
    where = f"{op.method} {op.template} [{label}] -> {response.status_code}"
    if response.status_code >= 500 and not (database_down and response.status_code == 503):
        return [f"{where}: server error {response.text[:200]!r}"]
    declared = op.spec["responses"].get(str(response.status_code))
    if declared is None:
        return [f"{where}: status not declared (declared: {sorted(op.spec['responses'])})"]
    schema = (declared.get("content") or {}).get("application/json", {}).get("schema")
    if schema is None:
        return []
    try:
        body = response.json()
    except ValueError:
        return [f"{where}: not JSON: {response.text[:100]!r}"]
    return [f"{where}: {problem}" for problem in conforms(doc, schema, body)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fuzzed(scratch) -> SimpleNamespace:
    """Every variant of every operation, on the scratch database, then the baselines in server
    states made for the rarer statuses. ``problems``: what :func:`check` found; ``seen``: the
    statuses answered, by operation."""
    client = scratch.client
    doc = client.get("/openapi.json").json()
    max_bytes = client.app.state.settings.max_request_bytes
    problems: list[str] = []
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    sent = 0

    def run(c: TestClient, op: Operation, label: str, request: dict[str, Any]) -> None:
        nonlocal sent
        response = send(c, op, request)
        sent += 1
        seen[op.method, op.template].add(response.status_code)
        problems.extend(check(doc, op, label, response, database_down=label == "database down"))

    ops = operations(doc)
    for op in ops:
        base = baseline(doc, op, scratch.id)
        for label, request in variants(doc, op, base, max_bytes):
            run(client, op, label, request)
        run(client, op, "dictionary without SAE", baseline(doc, op, scratch.no_sae))

    read_only = Settings(MONGO_URI=scratch.uri, SAES_MONGO_DB=scratch.db, SAES_WRITE_TOKEN=None)
    with TestClient(create_app(read_only), raise_server_exceptions=False) as c:
        for op in ops:
            run(c, op, "read-only server", baseline(doc, op, scratch.id))
    down = create_app(Settings(MONGO_URI=scratch.uri, SAES_MONGO_DB=scratch.db, SAES_WRITE_TOKEN=WRITE_TOKEN))
    dead = MongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=100, connectTimeoutMS=100)
    down.state.db = dead["saes"]  # no lifespan: the app never connected, as if the database went away
    try:
        c = TestClient(down, raise_server_exceptions=False)
        for op in ops:
            run(c, op, "database down", baseline(doc, op, scratch.id))
    finally:
        dead.close()
    return SimpleNamespace(doc=doc, ops=ops, problems=problems, seen=seen, sent=sent)


def report(problems: list[str]) -> str:
    return f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:25])


def test_the_fuzzer_reaches_every_operation(fuzzed):
    assert {(op.method, op.template) for op in fuzzed.ops} == set(fuzzed.seen)
    assert len(fuzzed.ops) >= 11 and all(200 in statuses for statuses in fuzzed.seen.values())
    assert fuzzed.sent > 40 * len(fuzzed.ops), fuzzed.sent


def test_no_input_reaches_a_server_error(fuzzed):
    errors = [p for p in fuzzed.problems if "server error" in p]
    assert not errors, report(errors)


def test_every_answer_is_declared_with_its_schema(fuzzed):
    assert not fuzzed.problems, report(fuzzed.problems)


def test_every_declared_status_is_answered(fuzzed):
    missing = {f"{op.method} {op.template}": sorted(set(map(int, op.spec["responses"])) - fuzzed.seen[op.method, op.template])
               for op in fuzzed.ops}  # fmt: skip
    never = {k: v for k, v in missing.items() if v}
    assert not never, f"declared but never answered: {never}"

