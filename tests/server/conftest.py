"""Fixtures of the server tests: a real MongoDB-wire-protocol server over TCP filled by the real
analysis pipeline (small TopK SAE on the real default model), and the FastAPI app on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from saes.analysis.config import register_analyze_configs
from saes.analysis.run import run_analysis
from saes.store import connect
from server.app import create_app
from server.settings import Settings
from tests.analysis.conftest import make_sae  # noqa: F401  (shared fixture)

from ..conftest import REPO

register_analyze_configs()
D_SAE, K = 128, 8
TOKENS = 24 * 128
WRITE_TOKEN = "s3cret-token"
DB_NAME = "saes_server_tests"
SCRATCH_DB = "saes_server_scratch"
NO_SAE_ID = "no-sae-path"


@pytest.fixture(scope="session")
def analyzed(make_sae, mongo_uri, smollm) -> SimpleNamespace:  # noqa: F811
    """A dictionary analyzed by the real pipeline into database ``DB_NAME``."""
    run: Path = make_sae(D_SAE, K, name="server")
    overrides = [f"sae_path={run}", "device=cpu", f"mongo_uri='{mongo_uri}'", f"mongo_db={DB_NAME}",
                 f"analysis.tokens={TOKENS}", "analysis.batch_contexts=8", "analysis.top_n=6", "analysis.bands=4",
                 "analysis.samples_per_band=2", "analysis.random_samples=3", "analysis.reservoir=16"]  # fmt: skip
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=overrides)
    summary = run_analysis(cfg, progress=False, model=smollm)
    return SimpleNamespace(run=run, uri=mongo_uri, id=summary["dictionary_id"], summary=summary)


@pytest.fixture(scope="session")
def client(analyzed) -> Iterator[TestClient]:
    """The app with a write token, on the analyzed database (lifespan run: connects at startup)."""
    settings = Settings(MONGO_URI=analyzed.uri, SAES_MONGO_DB=DB_NAME, SAES_WRITE_TOKEN=WRITE_TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def read_only_client(analyzed) -> Iterator[TestClient]:
    settings = Settings(MONGO_URI=analyzed.uri, SAES_MONGO_DB=DB_NAME, SAES_WRITE_TOKEN=None)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def scratch(analyzed) -> Iterator[SimpleNamespace]:
    """A copy of the analyzed database (writes there leave the other tests' data alone) plus a
    dictionary ``NO_SAE_ID`` recording no SAE path, served by the app with the write token. Its
    client answers a server error as a 500 response instead of raising, so a test can count it."""
    src = connect(analyzed.uri, DB_NAME, create_indexes=False)
    src.client.drop_database(SCRATCH_DB)
    dst = src.client[SCRATCH_DB]
    for name in src.list_collection_names():
        if docs := list(src[name].find()):
            dst[name].insert_many(docs)
    doc = dst.dictionaries.find_one({"_id": analyzed.id})
    provenance = {k: v for k, v in (doc.get("provenance") or {}).items() if k != "sae_path"}
    dst.dictionaries.insert_one({**doc, "_id": NO_SAE_ID, "provenance": provenance})
    settings = Settings(MONGO_URI=analyzed.uri, SAES_MONGO_DB=SCRATCH_DB, SAES_WRITE_TOKEN=WRITE_TOKEN)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            yield SimpleNamespace(client=c, uri=analyzed.uri, db=SCRATCH_DB, id=analyzed.id, no_sae=NO_SAE_ID)
    finally:
        src.client.drop_database(SCRATCH_DB)
        src.client.close()
