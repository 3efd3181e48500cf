"""The built UI in headless Chromium against the real server (uvicorn in a subprocess) on a real
MongoDB-wire-protocol server filled by the real analysis pipeline on the default model.

The browser is driven by tests/ui/e2e.mjs (playwright-core); it records what the page shows and
saves screenshots under outputs/test-artifacts/ui/. Expected values are the API's JSON, fetched
here independently of the browser."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from saes.store import connect
from tests.analysis.conftest import make_sae  # noqa: F401  (shared fixture)
from tests.server.conftest import DB_NAME, WRITE_TOKEN, analyzed  # noqa: F401

from ..conftest import REPO
from tests.ui.conftest import ARTIFACTS

pytestmark = pytest.mark.slow  # runs the real model end to end (deselect with -m 'not slow')

LIVE_TEXT = "def main():\n    print('Hello <b>world</b> & friends')\n    return 42"
EXPLANATION = "Fires on <tokens> & spaces before code"
HIGHLIGHT_MAX_ALPHA = 0.85


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as res:
        return json.load(res)


@pytest.fixture
def server(analyzed, ui_built) -> Iterator[SimpleNamespace]:  # noqa: F811
    """``uvicorn server.app:app`` on a free port, serving ui/dist and the analyzed database."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SAES_ALLOWED_ORIGINS"}
    env.update(MONGO_URI=analyzed.uri, SAES_MONGO_DB=DB_NAME, SAES_WRITE_TOKEN=WRITE_TOKEN, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "uvicorn.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get_json(f"{url}/api/health") == {"ok": True}:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"uvicorn did not start (rc {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield SimpleNamespace(url=url, proc=proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def alpha(css: str) -> float:
    """Opacity of a computed ``rgb(...)``/``rgba(...)`` background (transparent -> 0)."""
    parts = re.findall(r"[\d.]+", css)
    return float(parts[3]) if len(parts) == 4 else 1.0


def check_tokens(
    seen: list[dict[str, Any]], tokens: list[str], acts: list[float], max_act: float, center: int | None
) -> None:
    """The page shows exactly these tokens with these activations, colored by activation / max."""
    assert [t["token"] for t in seen] == tokens
    assert [t["act"] for t in seen] == pytest.approx(acts, rel=1e-6, abs=1e-9)
    if center is not None:
        assert [i for i, t in enumerate(seen) if t["center"]] == [center]
    for t in seen:
        if "\n" not in t["token"] and "\t" not in t["token"] and t["token"]:
            assert t["text"] == t["token"]  # shown as is (escaped by the page, not rewritten)
        assert json.dumps(t["token"], ensure_ascii=False) in t["title"]
        if t["act"] <= 0:
            assert alpha(t["background"]) == 0, t
        else:
            expected = 0.08 + (HIGHLIGHT_MAX_ALPHA - 0.08) * min(1.0, t["act"] / max_act)
            assert alpha(t["background"]) == pytest.approx(expected, abs=0.01), t


def test_ui_in_a_browser(server, analyzed):  # noqa: F811
    api = f"{server.url}/api/dictionaries/{urllib.parse.quote(analyzed.id)}"
    summary = get_json(api)
    by_max = get_json(f"{api}/features?sort=max_activation&descending=true&limit=50")["features"]
    by_density = get_json(f"{api}/features?sort=density&descending=true&limit=50")["features"]
    index = by_max[0]["index"]
    feature = get_json(f"{api}/features/{index}")
    page2 = get_json(f"{api}/features?sort=density&descending=true&skip=50&limit=50")
    every = {f["index"]: f for f in get_json(f"{api}/features?sort=index&descending=false&limit=500")["features"]}
    density_min, max_act_min = 0.01, 10.0
    filtered = get_json(
        f"{api}/features?sort=density&descending=true&limit=50&density_min={density_min}&max_activation_min={max_act_min}"
    )
    query = next(t["token"].strip() for t in feature["logits"]["top"] if len(t["token"].strip()) >= 2)
    found = get_json(f"{api}/search?q={urllib.parse.quote(query)}&limit=50")["features"]
    live = get_json(f"{api}/features/{index}/activations", {"text": LIVE_TEXT})
    assert feature["top"] and any(v > 0 for v in live["values"]), "the fixture should give a feature that fires"

    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    args = {"url": server.url, "out": str(ARTIFACTS), "dictionary": analyzed.id, "feature": index, "text": LIVE_TEXT,
            "densityMin": density_min, "maxActMin": max_act_min, "search": query,
            "explanation": EXPLANATION, "writeToken": WRITE_TOKEN, "serverPid": server.proc.pid}  # fmt: skip
    t0 = time.monotonic()
    cmd = ["node", str(REPO / "tests" / "ui" / "e2e.mjs"), json.dumps(args)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    seen = json.loads((ARTIFACTS / "observed.json").read_text())
    assert proc.returncode == 0, (
        f"browser run failed at {seen.get('error')}\n{proc.stderr[-3000:]}\nscreenshots: {ARTIFACTS}"
    )
    print(f"browser run {time.monotonic() - t0:.1f} s; screenshots in {ARTIFACTS}")

    # Dictionaries page lists the dictionary with its columns.
    row = next(r for r in seen["dictionaries"] if r[0] == analyzed.id)
    assert row[1:5] == [summary["model"], summary["site"], summary["variant"], str(summary["d_sae"])]
    # Dictionary page: one bar per non-empty density bin; the table in the API's order, re-sorted on click.
    counts = summary["density_histogram"]["counts"]
    assert seen["densityBins"] == len(counts) and seen["densityBars"] == sum(c > 0 for c in counts)
    assert seen["tableByMax"] == [f["index"] for f in by_max]
    assert seen["tableByDensity"] == [f["index"] for f in by_density]
    assert seen["tableByDensityPage2"] == [f["index"] for f in page2["features"]]
    assert seen["pagerPage2"].startswith(f"51–{min(100, page2['total'])} of {page2['total']}")
    # Range filters go to the list endpoint's query parameters; the page shows its answer.
    assert 0 < filtered["total"] < len(every), "pick filters that keep some features and drop others"
    assert seen["tableFiltered"] == [f["index"] for f in filtered["features"]]
    assert seen["filteredTotal"] == f"{filtered['total']} match"
    assert all(
        every[i]["density"] >= density_min and every[i]["max_activation"] >= max_act_min for i in seen["tableFiltered"]
    )
    # Search by token and the random-feature button.
    assert found and seen["searchResults"] == [f"#/d/{analyzed.id}/f/{f['index']}" for f in found]
    assert every[seen["random"]]["count"] > 0

    # Feature page: every highlighted token and value is the API's.
    f = seen["feature"]
    assert f["hash"] == f"#/d/{analyzed.id}/f/{index}"
    assert float(f["maxStat"]) == pytest.approx(feature["max_activation"], rel=5e-3)
    assert [float(v) for v in f["top"]] == pytest.approx([e["value"] for e in feature["top"]], rel=5e-3)
    assert len(f["topTokens"]) == len(feature["top"])
    for shown, example in zip(f["topTokens"], feature["top"]):
        check_tokens(shown, example["tokens"], example["acts"], feature["max_activation"], example["center"])
    assert f["neighbours"] == [f"#/d/{analyzed.id}/f/{n['index']}" for n in feature["neighbours"]]
    assert f["activationBins"] == len(feature["histogram"]["counts"])
    assert (seen["afterRight"], seen["afterLeft"]) == (
        f"#/d/{analyzed.id}/f/{index + 1}",
        f"#/d/{analyzed.id}/f/{index}",
    )

    # Live inference: the page shows the API's per-token activations for the typed text.
    check_tokens(seen["live"], live["tokens"], live["values"], feature["max_activation"], None)

    # The explanation typed on the page (with the write token) is stored, and shown as text.
    assert seen["explanation"] == EXPLANATION
    db = connect(analyzed.uri, DB_NAME, create_indexes=False)
    assert db.explanations.find_one({"_id": f"{analyzed.id}:{index}"})["text"] == EXPLANATION
    db.client.close()

    # Error states: a missing feature, then the backend stopped under the open page.
    assert "not found" in seen["notFound"].lower()
    assert "unreachable" in seen["backendDown"] and server.url in seen["backendDown"]
    assert server.proc.wait(timeout=30) is not None
    assert not [m for m in seen["console"] if m.startswith("pageerror")], seen["console"]
