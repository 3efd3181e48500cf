"""Caches of the hot read path: feature pages per analysis and dictionary records for a moment.

An active analysis never changes (a re-analysis publishes under a new id), so a feature page keyed
by ``(database, analysis id, feature index)`` stays valid for as long as it is cached. Pages are
kept as JSON bytes (the API's ``Feature`` without its explanation, which is spliced in per request).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from threading import Lock
from typing import Any

import orjson
from pymongo.database import Database

from saes.store import query
from server.serialize import feature_json


class FeaturePages:
    """LRU of feature pages as JSON bytes, ``size`` pages at most (a page is ~2-30 kB)."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self.lock = Lock()

    def get(self, db: Database, dictionary: Mapping[str, Any], index: int) -> bytes | None:
        """The page of feature ``index`` of the dictionary's active analysis, or None if it has none."""
        dictionary_id, aid = dictionary["_id"], dictionary.get("active_analysis_id")
        d_sae = (dictionary.get("config") or {}).get("d_sae")
        for _ in range(3):  # a publish may flip the active analysis (and drop the old one) meanwhile
            if aid is None:
                return None
            key = (db.name, aid, index)
            with self.lock:
                if key in self.items:
                    self.items.move_to_end(key)
                    return self.items[key]
            doc = query.get_analysis_feature(db, dictionary_id, aid, index)
            if doc is not None:
                page = orjson.dumps(feature_json(doc, dictionary_id, d_sae))
                with self.lock:
                    self.items[key] = page
                    while len(self.items) > self.size:
                        self.items.popitem(last=False)
                return page
            latest = query.active_analysis_id(db, dictionary_id)
            if latest == aid:
                return None
            aid = latest
        return None


def with_explanation(page: bytes, explanation: str | None) -> bytes:
    """``page`` (a JSON object) with an ``explanation`` key added."""
    return page[:-1] + b',"explanation":' + orjson.dumps(explanation) + b"}"


class Dictionaries:
    """Dictionary records cached for ``ttl_s`` seconds: a re-analysis or new dictionary shows
    within that delay, and the hot routes skip one database round trip per request."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.items: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self.lock = Lock()

    def get(self, db: Database, dictionary_id: str) -> dict[str, Any] | None:
        key, now = (db.name, dictionary_id), time.monotonic()
        with self.lock:
            hit = self.items.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        doc = query.get_dictionary(db, dictionary_id)
        with self.lock:
            if len(self.items) > 10_000:
                self.items.clear()
            self.items[key] = (now, doc)
        return doc
