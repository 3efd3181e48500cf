"""Writing analyses: register a dictionary, publish an analysis atomically, clean up leftovers.

The publish protocol (readers see the old analysis or the new one, never a mix, never nothing):

1. A new ``analysis_id`` is recorded in ``analyses`` with status ``writing``.
2. Every feature document is written under that id, in batches (``insert_many``). Readers do not
   look at it: they only read the dictionary's ``active_analysis_id``.
3. The dictionary's ``active_analysis_id`` is flipped to the new id in ONE update (journaled:
   ``j=True``, so it and every write before it survive a server crash). This is the commit point.
4. The old analysis's features are deleted and it is marked ``deleted``.

A failure in step 2 (an exception from the feature generator, a duplicate index, the process dying)
leaves the old analysis active and untouched. Partial documents of a failed run are deleted at once
when possible, else by :func:`gc_orphans` (run by the next publish of that dictionary).
Re-running replaces: the feature count stays the number of features, never doubles.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from numbers import Real
from typing import Any

import numpy as np
from pymongo import WriteConcern
from pymongo.database import Database
from pymongo.errors import PyMongoError

from saes.store.arrays import pack_array, to_bson_value
from saes.store.schema import (
    ACTIVE,
    ANALYSES,
    COLUMN_FIELDS,
    DELETED,
    DICTIONARIES,
    EXPLANATIONS,
    FAILED,
    FEATURES,
    SUPERSEDED,
    WRITING,
    Document,
)

DEFAULT_BATCH_SIZE = 256
MAX_COLUMN_ROWS = 500_000  # whole-analysis columns must fit in one 16 MB document
JOURNALED = WriteConcern(w=1, j=True)


def _now() -> datetime:
    return datetime.now(UTC)


def new_analysis_id() -> str:
    """A fresh, unique, roughly time-ordered analysis id."""
    return f"{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"


def upsert_dictionary(
    db: Database[Document],
    dictionary_id: str,
    *,
    config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Create or update the dictionary's document; fields given as None are left as they are.
    Never touches ``active_analysis_id`` (only :func:`publish_analysis` moves it)."""
    now = _now()
    fields: dict[str, Any] = {"updated_at": now}
    for key, value in (("config", config), ("provenance", provenance), ("metrics", metrics)):
        if value is not None:
            fields[key] = to_bson_value(dict(value))
    for key, value in (extra or {}).items():
        if key in ("_id", "active_analysis_id", "created_at"):
            raise ValueError(f"upsert_dictionary: {key!r} cannot be set")
        fields[key] = to_bson_value(value)
    db[DICTIONARIES].update_one(
        {"_id": dictionary_id},
        {"$set": fields, "$setOnInsert": {"created_at": now, "active_analysis_id": None}},
        upsert=True,
    )


def publish_analysis(
    db: Database[Document],
    dictionary_id: str,
    features: Iterable[Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    expected_count: int | None = None,
    analysis_id: str | None = None,
    stale_after_s: float = 3600.0,
) -> str:
    """Write ``features`` (one mapping per feature, each with an int ``index``) as a new analysis of
    ``dictionary_id`` and make it the active one atomically; return the new analysis id.

    Numpy scalars/arrays in the mappings are converted (arrays packed with their own dtype; pack
    them yourself with :func:`~saes.store.arrays.pack_array` to choose float16). ``expected_count``
    makes a short or long stream fail instead of being published. On any exception the old
    analysis stays active and the exception propagates. ``stale_after_s``: a ``writing`` analysis
    with no progress for this long is treated as crashed and its leftovers are deleted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    upsert_dictionary(db, dictionary_id)
    aid = analysis_id or new_analysis_id()
    analyses = db[ANALYSES]
    now = _now()
    analyses.insert_one(
        {"_id": aid, "dictionary_id": dictionary_id, "status": WRITING, "started_at": now, "heartbeat_at": now,
         "n_features": 0, "meta": to_bson_value(dict(meta or {})), "writer": f"{socket.gethostname()}:{os.getpid()}"}
    )  # fmt: skip
    gc_orphans(db, dictionary_id, stale_after_s=stale_after_s, keep=(aid,))

    columns: dict[str, list[float]] = {name: [] for name in ("index", *COLUMN_FIELDS)}
    n = 0
    try:
        batch: list[Document] = []
        for feature in features:
            doc = _feature_doc(feature, dictionary_id, aid)
            batch.append(doc)
            columns["index"].append(doc["index"])
            for name in COLUMN_FIELDS:
                value = doc.get(name)
                columns[name].append(float(value) if isinstance(value, Real) else math.nan)
            if len(batch) >= batch_size:
                n += _flush(db, aid, batch, n)
        if batch:
            n += _flush(db, aid, batch, n)
        if expected_count is not None and n != expected_count:
            raise ValueError(f"publish_analysis: {n} features written, {expected_count} expected; not published")
        if n == 0:
            raise ValueError("publish_analysis: no features; not published")
    except BaseException as e:  # KeyboardInterrupt too: never leave a half-written analysis behind
        _abandon(db, dictionary_id, aid, e)
        raise

    finished: dict[str, Any] = {"n_features": n, "heartbeat_at": _now()}
    if n <= MAX_COLUMN_ROWS:
        finished["columns"] = {
            "index": pack_array(np.asarray(columns["index"], dtype=np.int64).astype(np.int32)),
            **{name: pack_array(np.asarray(columns[name], dtype=np.float64 if name == "count" else np.float32))
               for name in COLUMN_FIELDS},
        }
    analyses.update_one({"_id": aid}, {"$set": finished})
    old = _flip_active(db, dictionary_id, aid)  # the commit point
    analyses.update_one({"_id": aid}, {"$set": {"status": ACTIVE, "finished_at": _now()}})
    if old is not None and old != aid:
        analyses.update_one({"_id": old}, {"$set": {"status": SUPERSEDED, "superseded_by": aid}})
        db[FEATURES].delete_many({"dictionary_id": dictionary_id, "analysis_id": old})
        analyses.update_one({"_id": old}, {"$set": {"status": DELETED, "deleted_at": _now()}})
    return aid


def gc_orphans(
    db: Database[Document], dictionary_id: str | None = None, stale_after_s: float = 3600.0, keep: Iterable[str] = ()
) -> int:
    """Delete the feature documents of analyses that can never become active: failed, superseded,
    or ``writing`` with no progress for ``stale_after_s`` (a crashed writer). Never touches an
    active analysis, nor those in ``keep``. Returns the number of feature documents deleted."""
    analyses, features = db[ANALYSES], db[FEATURES]
    scope: dict[str, Any] = {} if dictionary_id is None else {"dictionary_id": dictionary_id}
    dictionaries = db[DICTIONARIES].find(
        {} if dictionary_id is None else {"_id": dictionary_id}, {"active_analysis_id": 1}
    )
    active = {d.get("active_analysis_id") for d in dictionaries}
    keep = set(keep)
    cutoff = _now() - timedelta(seconds=stale_after_s)
    candidates = list(analyses.find({**scope, "status": {"$in": [FAILED, SUPERSEDED]}, "cleaned": {"$ne": True}}))
    # Staleness is judged here, not in the query: a handful of documents, and datetime comparison
    # operators are not reliable on every wire-protocol server (nx-27017 gets them wrong).
    writing = analyses.find({**scope, "status": WRITING}, {"columns": 0})
    candidates += [a for a in writing if _as_utc(a.get("heartbeat_at")) < cutoff]
    deleted = 0
    for analysis in candidates:
        aid = analysis["_id"]
        if aid in keep:
            continue
        if aid in active:  # flipped, but its status update was lost in a crash: repair it
            analyses.update_one({"_id": aid}, {"$set": {"status": ACTIVE}})
            continue
        deleted += features.delete_many({"dictionary_id": analysis["dictionary_id"], "analysis_id": aid}).deleted_count
        status = DELETED if analysis["status"] == SUPERSEDED else FAILED
        update: dict[str, Any] = {"status": status, "cleaned": True}
        if analysis["status"] == WRITING:
            update["error"] = f"abandoned: no progress since {analysis.get('heartbeat_at')}"
        analyses.update_one({"_id": aid, "status": analysis["status"]}, {"$set": update})
    return deleted


def delete_dictionary(db: Database[Document], dictionary_id: str, *, keep_explanations: bool = False) -> int:
    """Remove a dictionary with all its analyses, features and (unless ``keep_explanations``) its
    explanations; returns the feature documents deleted.

    Explanations outlive a re-analysis (same SAE, same features) but not the dictionary: left
    behind they would still be served by id and would attach to whatever SAE is next published
    under that id. ``keep_explanations=True`` is for re-creating the same dictionary from scratch."""
    db[DICTIONARIES].delete_one({"_id": dictionary_id})
    deleted = db[FEATURES].delete_many({"dictionary_id": dictionary_id}).deleted_count
    db[ANALYSES].delete_many({"dictionary_id": dictionary_id})
    if not keep_explanations:
        db[EXPLANATIONS].delete_many({"dictionary_id": dictionary_id})
    return deleted


def _as_utc(value: Any) -> datetime:
    """A stored timestamp as an aware UTC datetime (naive ones are UTC); missing = the epoch.
    nx-27017 0.8.1 stores a datetime given to ``$set`` as an ISO string: parse those too."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime):
        return datetime.fromtimestamp(0, UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _feature_doc(feature: Mapping[str, Any], dictionary_id: str, aid: str) -> Document:
    if not isinstance(feature, Mapping):
        raise TypeError(f"publish_analysis: a feature must be a mapping, got {type(feature).__name__}")
    doc = to_bson_value(feature)
    index = doc.pop("index", None)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"publish_analysis: each feature needs a non-negative int 'index', got {index!r}")
    for key, expected in (("dictionary_id", dictionary_id), ("analysis_id", aid)):
        if doc.pop(key, expected) != expected:
            raise ValueError(f"publish_analysis: feature {index} has a different {key}")
    doc.pop("_id", None)
    return {"dictionary_id": dictionary_id, "analysis_id": aid, "index": index, **doc}


def _flush(db: Database[Document], aid: str, batch: list[Document], written: int) -> int:
    count = len(batch)
    db[FEATURES].insert_many(batch, ordered=True)
    batch.clear()
    db[ANALYSES].update_one({"_id": aid}, {"$set": {"heartbeat_at": _now(), "n_features": written + count}})
    return count


def _flip_active(db: Database[Document], dictionary_id: str, aid: str) -> str | None:
    """Point the dictionary at ``aid`` (compare-and-set, journaled); return the previous id."""
    dictionaries = db[DICTIONARIES].with_options(write_concern=JOURNALED)
    for _ in range(100):
        current = dictionaries.find_one({"_id": dictionary_id}, {"active_analysis_id": 1})
        if current is None:
            raise RuntimeError(f"dictionary {dictionary_id!r} was deleted while an analysis was being published")
        old = current.get("active_analysis_id")
        result = dictionaries.update_one(
            {"_id": dictionary_id, "active_analysis_id": old},
            {"$set": {"active_analysis_id": aid, "updated_at": _now()}},
        )
        if result.matched_count == 1:
            return old
    raise RuntimeError(f"could not publish analysis {aid}: dictionary {dictionary_id!r} kept changing")


def _abandon(db: Database[Document], dictionary_id: str, aid: str, error: BaseException) -> None:
    """Best effort after a failed write: mark the analysis failed and delete its partial documents."""
    try:
        db[ANALYSES].update_one(
            {"_id": aid},
            {"$set": {"status": FAILED, "error": f"{type(error).__name__}: {error}"[:2000], "finished_at": _now()}},
        )
        db[FEATURES].delete_many({"dictionary_id": dictionary_id, "analysis_id": aid})
        db[ANALYSES].update_one({"_id": aid}, {"$set": {"cleaned": True}})
    except PyMongoError:
        pass  # gc_orphans will find it (status failed, or writing with a stale heartbeat)
