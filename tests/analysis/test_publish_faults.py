"""Faults while an analysis is published, on the real default model and a real MongoDB-wire-protocol
server over TCP: readers see the previous analysis whole or the new one whole, never a mix or a
part, and re-running replaces. Mocks are used only to inject the faults (a bulk write that raises
after its first batch, a writer that dies without cleaning up, a publish landing mid-read)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

import saes.store.publish as publish_module
import saes.store.query as query_module
from saes.analysis.config import register_analyze_configs
from saes.analysis.run import run_analysis
from saes.store import (
    active_analysis_id,
    connect,
    count_features,
    gc_orphans,
    get_feature,
    get_features,
    list_analyses,
    list_features,
)

from ..conftest import REPO

register_analyze_configs()
D_SAE = 600  # publish writes batches of 256: the fault hits with 256 documents written, 344 to go
BATCH = publish_module.DEFAULT_BATCH_SIZE
SMALL = ["analysis.top_n=4", "analysis.reservoir=8", "analysis.samples_per_band=2", "analysis.random_samples=2",
         "analysis.bands=3", "analysis.batch_contexts=4", "analysis.neighbours=3", "analysis.logit_effects=3"]  # fmt: skip
OLD_TOKENS, NEW_TOKENS = 4 * 128, 8 * 128  # the two analyses differ in their token budget (so in content)


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


def read_everything(db: Any, dictionary_id: str) -> dict[str, Any]:
    """What a reader (the server) can see: every feature by index, a sorted listing page by page,
    single features, and the count."""
    pages, skip = [], 0
    while page := list_features(db, dictionary_id, sort_by="density", skip=skip, limit=250):
        pages.extend(page)
        skip += len(page)
    return {
        "all": [_strip(d) for d in get_features(db, dictionary_id, range(D_SAE))],
        "listed": sorted(d["index"] for d in pages),
        "listed_aids": {d["analysis_id"] for d in pages},
        "singles": [_strip(get_feature(db, dictionary_id, i) or {}) for i in (0, BATCH - 1, BATCH, D_SAE - 1)],
        "count": count_features(db, dictionary_id),
    }


def assert_whole(seen: dict[str, Any], analysis_id: str, docs: list[dict[str, Any]] | None = None) -> None:
    """``seen`` shows exactly the D_SAE features of ``analysis_id`` (and equals ``docs`` if given)."""
    assert [d["index"] for d in seen["all"]] == list(range(D_SAE))
    assert {d["analysis_id"] for d in seen["all"]} == {analysis_id}
    assert seen["listed"] == list(range(D_SAE)) and seen["listed_aids"] == {analysis_id}
    assert [d["analysis_id"] for d in seen["singles"]] == [analysis_id] * 4
    assert seen["count"] == D_SAE
    if docs is not None:
        assert seen["all"] == docs
        assert seen["singles"] == [docs[i] for i in (0, BATCH - 1, BATCH, D_SAE - 1)]


@pytest.fixture
def published(make_sae, mongo_uri, smollm) -> Iterator[SimpleNamespace]:
    """A fresh database holding one published analysis (OLD_TOKENS) of a 600-latent SAE, what
    readers see of it, and ``analyze(tokens)`` to run another one of the same SAE."""
    run = make_sae(D_SAE, 8, name="faults")
    db_name = f"saes_faults_{uuid.uuid4().hex[:10]}"

    def analyze(tokens: int) -> dict[str, Any]:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("analyze", overrides=[f"sae_path={run}", "device=cpu", f"mongo_uri='{mongo_uri}'",
                                                f"mongo_db={db_name}", f"analysis.tokens={tokens}", *SMALL])  # fmt: skip
        return run_analysis(cfg, {}, progress=False, model=smollm)

    first = analyze(OLD_TOKENS)
    db = connect(mongo_uri, db_name)
    did, old = first["dictionary_id"], first["analysis_id"]
    before = read_everything(db, did)
    assert_whole(before, old)
    yield SimpleNamespace(db=db, did=did, old=old, before=before["all"], analyze=analyze)
    db.client.drop_database(db_name)
    db.client.close()


def n_docs(db: Any, did: str, analysis_id: str | None = None) -> int:
    query = {"dictionary_id": did} if analysis_id is None else {"dictionary_id": did, "analysis_id": analysis_id}
    return db.features.count_documents(query)


def test_crash_after_the_first_batch_keeps_the_old_analysis_whole_and_a_rerun_replaces(published, monkeypatch):
    db, did, old = published.db, published.did, published.old
    real_flush, during = publish_module._flush, {}

    def flush_then_fail(db_, aid, batch, written):
        if written == 0:
            return real_flush(db_, aid, batch, written)
        # the second batch: the first one is in the database under the new id; readers look now
        during.update(aid=aid, partial=n_docs(db, did, aid), seen=read_everything(db, did))
        raise RuntimeError("injected fault: bulk write failed after the first batch")

    monkeypatch.setattr(publish_module, "_flush", flush_then_fail)
    with pytest.raises(RuntimeError, match="injected fault"):
        published.analyze(NEW_TOKENS)
    monkeypatch.undo()

    assert during["partial"] == BATCH  # the crash really came mid-write
    assert_whole(during["seen"], old, published.before)  # readers at that moment: the old analysis only
    assert active_analysis_id(db, did) == old
    assert_whole(read_everything(db, did), old, published.before)  # and after the crash
    assert n_docs(db, did, during["aid"]) == 0 and n_docs(db, did) == D_SAE  # the partial batch is gone
    failed = next(a for a in list_analyses(db, did) if a["_id"] == during["aid"])
    assert failed["status"] == "failed" and "injected fault" in failed["error"]

    rerun = published.analyze(NEW_TOKENS)
    new = rerun["analysis_id"]
    assert new not in (old, during["aid"]) and active_analysis_id(db, did) == new
    after = read_everything(db, did)
    assert_whole(after, new)
    assert n_docs(db, did) == D_SAE  # replaced, never duplicated
    changed = sum(a["count"] != b["count"] for a, b in zip(after["all"], published.before))
    assert changed > D_SAE // 4  # the new analysis (twice the tokens) really differs from the old one
    statuses = {a["_id"]: a["status"] for a in list_analyses(db, did)}
    assert statuses == {old: "deleted", during["aid"]: "failed", new: "active"}


def test_writer_dying_mid_write_leaves_orphans_no_reader_sees(published, monkeypatch):
    """The process dies after the first batch: no exception handling, no cleanup runs."""
    db, did, old = published.db, published.did, published.old
    real_flush, dead = publish_module._flush, {}

    def flush_then_die(db_, aid, batch, written):
        if written == 0:
            return real_flush(db_, aid, batch, written)
        dead["aid"] = aid
        raise SystemExit(137)

    monkeypatch.setattr(publish_module, "_flush", flush_then_die)
    monkeypatch.setattr(publish_module, "_abandon", lambda *args: None)  # a dead process cleans nothing
    with pytest.raises(SystemExit):
        published.analyze(NEW_TOKENS)
    monkeypatch.undo()

    orphan = dead["aid"]
    assert n_docs(db, did, orphan) == BATCH  # left behind...
    assert_whole(read_everything(db, did), old, published.before)  # ...and invisible
    assert next(a for a in list_analyses(db, did) if a["_id"] == orphan)["status"] == "writing"

    new = published.analyze(NEW_TOKENS)["analysis_id"]
    assert_whole(read_everything(db, did), new)
    assert n_docs(db, did, new) == D_SAE and n_docs(db, did, old) == 0
    assert gc_orphans(db, did, stale_after_s=3600) == 0  # a writer silent for seconds may be alive
    assert gc_orphans(db, did, stale_after_s=0) == BATCH  # once stale, its documents go
    assert n_docs(db, did) == D_SAE
    assert_whole(read_everything(db, did), new)


def test_a_publish_landing_in_the_middle_of_a_read_never_serves_part_of_an_analysis(published, monkeypatch):
    """A reader's find streams its documents in batches; here the whole re-analysis (flip, then
    deletion of the old documents) runs between the reader's first and second half."""
    db, did, old = published.db, published.did, published.old
    real_fetch, new = query_module._fetch, {}

    def fetch_across_a_publish(db_, dictionary_id, aid, indices, projection):
        half = len(indices) // 2
        first = real_fetch(db_, dictionary_id, aid, indices[:half], projection)
        if not new:
            new.update(published.analyze(NEW_TOKENS))
        return first + real_fetch(db_, dictionary_id, aid, indices[half:], projection)

    monkeypatch.setattr(query_module, "_fetch", fetch_across_a_publish)
    got = [_strip(d) for d in get_features(db, did, range(D_SAE))]
    monkeypatch.undo()
    assert new and new["analysis_id"] != old
    assert [d["index"] for d in got] == list(range(D_SAE))  # whole, not the old first half
    assert {d["analysis_id"] for d in got} == {new["analysis_id"]}
    assert got == read_everything(db, did)["all"]


def test_concurrent_readers_see_one_whole_analysis_while_it_is_replaced(published):
    db, did, old = published.db, published.did, published.old
    reads: list[tuple[int, frozenset[str]]] = []  # one entry per read call: (documents, analysis ids)
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            docs = get_features(db, did, range(D_SAE), projection={"analysis_id": 1, "index": 1})
            reads.append((len(docs), frozenset(d["analysis_id"] for d in docs)))
            page = list_features(db, did, sort_by="max_activation", limit=D_SAE, projection={"analysis_id": 1})
            reads.append((len(page), frozenset(d["analysis_id"] for d in page)))
            time.sleep(0.001)

    def wait_for_reads(n: int) -> None:  # counts, not sleeps: reads are slow on a loaded machine
        deadline = time.monotonic() + 60
        while len(reads) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for_reads(2)  # the reader is running before the replacement starts
        new = published.analyze(NEW_TOKENS)["analysis_id"]
        wait_for_reads(len(reads) + 4)  # and goes on after it
    finally:
        done.set()
        thread.join(30)
    assert len(reads) >= 6
    for n, aids in reads:
        assert n == D_SAE and aids in ({old}, {new})
    assert reads[0][1] == {old} and reads[-1][1] == {new}
