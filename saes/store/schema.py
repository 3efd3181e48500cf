"""Connecting to MongoDB, and the collections and indexes that hold feature analyses.

Collections (database ``$SAES_MONGO_DB``, default ``saes``):

``dictionaries``  one document per SAE, ``_id`` = the dictionary id::

    {_id, config: {...}, provenance: {...}, metrics: {...},
     active_analysis_id: str | None, created_at, updated_at}

``analyses``  one document per analysis run (history is kept), ``_id`` = the analysis id::

    {_id, dictionary_id, status: "writing" | "active" | "superseded" | "deleted" | "failed",
     started_at, heartbeat_at, finished_at, n_features, meta: {...}, error,
     columns: {index, density, max_activation, mean_activation: packed arrays}}   # set when active

``features``  one document per feature of an analysis::

    {dictionary_id, analysis_id, index: int, density, max_activation, mean_activation,
     ... any further fields: histograms, top contexts, quantile samples, logit effects, neighbours,
     with arrays stored by :func:`saes.store.arrays.pack_array` (float16/float32 BSON binary)}

``explanations``  one text per explained feature, ``_id`` = ``"{dictionary_id}:{index}"`` (kept
apart from analyses, so a re-analysis keeps them; see :mod:`saes.store.explanations`)::

    {_id, dictionary_id, index: int, text: str, updated_at, source: "human" | "auto",
     explainer: str | None, scores: {name: float} | None}

Readers only ever read features whose ``analysis_id`` is their dictionary's ``active_analysis_id``
(see :mod:`saes.store.publish` for the protocol that makes a re-analysis atomic).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError

ENV_DB = "SAES_MONGO_DB"
DEFAULT_DB = "saes"
DICTIONARIES = "dictionaries"
ANALYSES = "analyses"
FEATURES = "features"
EXPLANATIONS = "explanations"

# Analysis statuses.
WRITING, ACTIVE, SUPERSEDED, DELETED, FAILED = "writing", "active", "superseded", "deleted", "failed"

# Scalar per-feature fields kept as whole-analysis columns (for fast sorted/filtered listing).
COLUMN_FIELDS: tuple[str, ...] = ("count", "density", "max_activation", "mean_activation")

FEATURE_INDEXES: list[tuple[str, list[tuple[str, int]], bool]] = [
    ("feature_key", [("dictionary_id", 1), ("analysis_id", 1), ("index", 1)], True),
    ("by_density", [("dictionary_id", 1), ("analysis_id", 1), ("density", -1)], False),
    ("by_max_activation", [("dictionary_id", 1), ("analysis_id", 1), ("max_activation", -1)], False),
]

Document = dict[str, Any]


class StoreConnectionError(RuntimeError):
    """MongoDB could not be reached (the message names the URI, without its password)."""


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for error messages and logs)."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def connect(
    uri: str | None = None, db_name: str | None = None, timeout_s: float = 5.0, create_indexes: bool = True
) -> Database[Document]:
    """Connect and check the server answers within ``timeout_s``; return the database.

    ``uri`` defaults to :func:`saes.store.local_server.ensure_server` (``$MONGO_URI``, else a local
    server started on demand); ``db_name`` to ``$SAES_MONGO_DB`` or ``saes``. Raises
    :class:`StoreConnectionError` naming the URI when the server is unreachable. With
    ``create_indexes`` the collections' indexes are created (idempotent).
    """
    if uri is None:
        from saes.store.local_server import ensure_server

        uri = ensure_server()
    db_name = db_name or os.environ.get(ENV_DB) or DEFAULT_DB
    ms = max(int(timeout_s * 1000), 1)
    try:
        client: pymongo.MongoClient[Document] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True, appname="saes"
        )
    except (ConfigurationError, ValueError, TypeError) as e:
        raise StoreConnectionError(f"invalid MongoDB URI {redact_uri(uri)}: {e}") from e
    try:
        client.admin.command("ping")
    except PyMongoError as e:
        client.close()
        raise StoreConnectionError(
            f"cannot reach MongoDB at {redact_uri(uri)} within {timeout_s:g} s "
            f"(set MONGO_URI, or unset it to use a local server): {type(e).__name__}: {str(e)[:300]}"
        ) from e
    db = client[db_name]
    if create_indexes:
        ensure_indexes(db)
    return db


def ensure_indexes(db: Database[Document]) -> None:
    """Create the collections' indexes if missing: features (dictionary_id, analysis_id, index)
    unique, plus density and max_activation within an analysis; analyses by dictionary/status;
    explanations by dictionary and feature index."""
    features = db[FEATURES]
    for name, keys, unique in FEATURE_INDEXES:
        features.create_index(keys, name=name, unique=unique)
    db[ANALYSES].create_index([("dictionary_id", 1), ("status", 1)], name="by_dictionary_status")
    db[EXPLANATIONS].create_index([("dictionary_id", 1), ("index", 1)], name="by_dictionary_index")
