"""Search features by token: which features have a string among their top logit effects or as the
max-activating token of one of their top contexts.

The first search of an analysis scans its features once (a projection of a few small fields) and
keeps ``{feature index: token strings}`` in memory; analyses never change once active, so the
index is cached per analysis id.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

import numpy as np
from pymongo.database import Database

from saes.store.arrays import unpack_array
from saes.store.query import iter_analysis_features

PROJECTION = {"index": 1, "strings": 1, "logits.top.tokens": 1, "top.tokens": 1, "top.center": 1, "_id": 0}


class SearchIndex:
    """Token strings per feature of one analysis, split by where they come from."""

    def __init__(self, db: Database, dictionary_id: str, analysis_id: str):
        self.logits: dict[int, list[str]] = {}
        self.context: dict[int, list[str]] = {}
        for doc in iter_analysis_features(db, dictionary_id, analysis_id, PROJECTION):
            index = int(doc["index"])
            self.logits[index] = list(((doc.get("logits") or {}).get("top") or {}).get("tokens") or [])
            top, strings = doc.get("top"), doc.get("strings") or []
            if top:
                tokens_NW = unpack_array(top["tokens"])
                ids = tokens_NW[:, int(top["center"])] if tokens_NW.ndim == 2 and tokens_NW.size else np.empty(0, int)
                self.context[index] = [strings[i] for i in ids if i >= 0]

    def search(self, needle: str, limit: int) -> list[tuple[int, str]]:
        """``(feature index, "logits" | "context")`` whose token strings contain ``needle``
        (case-insensitive, tokens' surrounding whitespace ignored). Exact token matches come
        before substring matches, logit matches before context matches, then by index."""
        needle = needle.strip().lower()
        ranked: dict[int, tuple[int, int, str]] = {}
        for order, (where, table) in enumerate((("logits", self.logits), ("context", self.context))):
            for index, tokens in table.items():
                words = [t.strip().lower() for t in tokens]
                rank = 0 if needle in words else 2 if any(needle in w for w in words) else None
                if rank is not None and (index not in ranked or ranked[index][:2] > (rank + order, index)):
                    ranked[index] = (rank + order, index, where)
        return [(index, where) for _, index, where in sorted(ranked.values())[:limit]]


class SearchCache:
    """LRU of :class:`SearchIndex` by ``(database, analysis id)``."""

    def __init__(self, size: int = 8):
        self.size = size
        self.items: OrderedDict[tuple[str, str], SearchIndex] = OrderedDict()
        self.lock = Lock()

    def get(self, db: Database, dictionary_id: str, analysis_id: str) -> SearchIndex:
        key = (db.name, analysis_id)
        with self.lock:
            if key not in self.items:
                self.items[key] = SearchIndex(db, dictionary_id, analysis_id)
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return self.items[key]
