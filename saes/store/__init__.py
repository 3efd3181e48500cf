"""Storage for feature analyses: MongoDB through pymongo.

>>> from saes.store import connect, publish_analysis, get_feature, pack_array
>>> db = connect()                      # $MONGO_URI, else a local server started on demand
>>> publish_analysis(db, "smollm2-L3-topk", ({"index": i, "density": d[i], ...} for i in range(n)))
>>> get_feature(db, "smollm2-L3-topk", 42)

Modules: :mod:`~saes.store.local_server` (the on-demand local server), :mod:`~saes.store.schema`
(connection, collections, indexes), :mod:`~saes.store.arrays` (compact arrays),
:mod:`~saes.store.publish` (atomic writes), :mod:`~saes.store.query` (reads),
:mod:`~saes.store.explanations` (feature explanations, kept across re-analyses).
"""

from __future__ import annotations

from saes.store.arrays import pack_array, unpack_array
from saes.store.explanations import (
    delete_explanations,
    explanation_id,
    get_explanation,
    get_explanation_text,
    list_explanations,
    put_explanation,
)
from saes.store.local_server import (
    LocalServerError,
    ServerNotInstalledError,
    ensure_server,
    running_server,
    stop_server,
)
from saes.store.publish import delete_dictionary, gc_orphans, publish_analysis, upsert_dictionary
from saes.store.query import (
    active_analysis_id,
    count_features,
    count_in_ranges,
    feature_columns,
    get_analysis,
    get_analysis_feature,
    get_dictionary,
    get_feature,
    get_features,
    list_analyses,
    list_dictionaries,
    list_features,
)
from saes.store.schema import (
    ANALYSES,
    DICTIONARIES,
    EXPLANATIONS,
    FEATURES,
    StoreConnectionError,
    connect,
    ensure_indexes,
)

__all__ = [
    "ANALYSES",
    "DICTIONARIES",
    "EXPLANATIONS",
    "FEATURES",
    "LocalServerError",
    "ServerNotInstalledError",
    "StoreConnectionError",
    "active_analysis_id",
    "connect",
    "count_features",
    "count_in_ranges",
    "delete_dictionary",
    "delete_explanations",
    "ensure_indexes",
    "ensure_server",
    "explanation_id",
    "feature_columns",
    "gc_orphans",
    "get_analysis",
    "get_analysis_feature",
    "get_dictionary",
    "get_explanation",
    "get_explanation_text",
    "get_feature",
    "get_features",
    "list_analyses",
    "list_dictionaries",
    "list_explanations",
    "list_features",
    "pack_array",
    "publish_analysis",
    "put_explanation",
    "running_server",
    "stop_server",
    "unpack_array",
    "upsert_dictionary",
]
