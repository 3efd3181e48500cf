"""Reading analyses: only the features of a dictionary's active analysis are ever returned.

A read resolves the dictionary's ``active_analysis_id``, reads features under that id, and checks
the id is still active. If a publish flipped it meanwhile (and began deleting the old features)
the read may be empty or partial; it is then redone under the new id, so callers never see a gap,
a partial result, or a mix of two analyses.

Sorted listing: every active analysis carries whole-analysis columns (index, count, density,
max_activation, mean_activation as packed arrays, a few bytes a feature). :func:`list_features`
sorts and filters those in numpy and fetches just one page of documents by index, instead of a
server-side sort over full feature documents. Arbitrary ``filter`` queries fall back to the server-side sort.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
from pymongo.database import Database

from saes.store.arrays import unpack_array
from saes.store.schema import ANALYSES, DICTIONARIES, FEATURES, Document

T = TypeVar("T")
Range = tuple[float | None, float | None]

_COLUMNS_CACHE: OrderedDict[tuple[str, str], dict[str, np.ndarray] | None] = OrderedDict()
_COLUMNS_CACHE_SIZE = 16
_READ_ATTEMPTS = 5  # a read is redone when a publish flipped the active analysis during it


def get_dictionary(db: Database[Document], dictionary_id: str) -> Document | None:
    """The dictionary's document (config, provenance, metrics, active_analysis_id), or None."""
    return db[DICTIONARIES].find_one({"_id": dictionary_id})


def list_dictionaries(db: Database[Document]) -> list[Document]:
    """All dictionary documents, sorted by id."""
    return list(db[DICTIONARIES].find({}).sort("_id", 1))


def active_analysis_id(db: Database[Document], dictionary_id: str) -> str | None:
    """The id of the analysis readers see for this dictionary, or None (none published yet)."""
    doc = db[DICTIONARIES].find_one({"_id": dictionary_id}, {"active_analysis_id": 1})
    return None if doc is None else doc.get("active_analysis_id")


def list_analyses(db: Database[Document], dictionary_id: str) -> list[Document]:
    """The dictionary's analysis runs (newest first), without their columns."""
    return list(db[ANALYSES].find({"dictionary_id": dictionary_id}, {"columns": 0}).sort("started_at", -1))


def get_analysis(
    db: Database[Document], analysis_id: str, projection: Mapping[str, Any] | None = None
) -> Document | None:
    """One analysis record by id (any status), or None."""
    return db[ANALYSES].find_one({"_id": analysis_id}, projection)


def get_analysis_feature(
    db: Database[Document],
    dictionary_id: str,
    analysis_id: str,
    index: int,
    projection: Mapping[str, Any] | None = None,
) -> Document | None:
    """Feature ``index`` of the analysis ``analysis_id`` (no active-id check: for callers that
    resolved the id themselves and redo the read when it changed), or None."""
    return db[FEATURES].find_one(
        {"dictionary_id": dictionary_id, "analysis_id": analysis_id, "index": int(index)}, projection
    )


def get_feature(
    db: Database[Document], dictionary_id: str, index: int, projection: Mapping[str, Any] | None = None
) -> Document | None:
    """One feature of the active analysis, or None."""

    def read(aid: str) -> Document | None:
        return get_analysis_feature(db, dictionary_id, aid, index, projection)

    return _read_active(db, dictionary_id, read, None)


def get_features(
    db: Database[Document], dictionary_id: str, indices: Iterable[int], projection: Mapping[str, Any] | None = None
) -> list[Document]:
    """Features of the active analysis in the order of ``indices`` (missing ones are skipped)."""
    wanted = [int(i) for i in indices]

    def read(aid: str) -> list[Document]:
        return _fetch(db, dictionary_id, aid, wanted, projection)

    return _read_active(db, dictionary_id, read, [])


def iter_analysis_features(db: Database[Document], dictionary_id: str, analysis_id: str,
                           projection: Mapping[str, Any] | None = None, batch_size: int = 2000) -> Iterator[Document]:
    """Every feature document of one analysis (in no particular order), fetched ``batch_size`` at
    a time: a full scan, for building in-memory indexes such as the server's search."""
    cursor = db[FEATURES].find({"dictionary_id": dictionary_id, "analysis_id": analysis_id}, projection)
    yield from cursor.batch_size(batch_size)


def count_features(db: Database[Document], dictionary_id: str) -> int:
    """The number of features in the active analysis (0 if none). Read from the analysis record
    (written at publish), not counted: counting documents scans them on the local servers."""
    aid = active_analysis_id(db, dictionary_id)
    if aid is None:
        return 0
    doc = db[ANALYSES].find_one({"_id": aid}, {"n_features": 1})
    if doc is None or "n_features" not in doc:
        return db[FEATURES].count_documents({"dictionary_id": dictionary_id, "analysis_id": aid})
    return int(doc["n_features"])


def feature_columns(db: Database[Document], dictionary_id: str) -> dict[str, np.ndarray] | None:
    """The active analysis's columns (``index``, ``count``, ``density``, ``max_activation``,
    ``mean_activation`` arrays, aligned), or None. Cached per analysis id (they never change)."""
    aid = active_analysis_id(db, dictionary_id)
    return None if aid is None else _columns(db, aid)


def list_features(
    db: Database[Document],
    dictionary_id: str,
    *,
    sort_by: str = "max_activation",
    descending: bool = True,
    skip: int = 0,
    limit: int = 50,
    ranges: Mapping[str, Range] | None = None,
    filter: Mapping[str, Any] | None = None,
    projection: Mapping[str, Any] | None = None,
) -> list[Document]:
    """One page of the active analysis's features, sorted by ``sort_by`` (ties by index).

    ``ranges`` keeps features with ``lo <= field <= hi`` per field (None = unbounded), e.g.
    ``{"density": (1e-4, 1e-2)}``. ``filter`` is any extra MongoDB filter (served by a slower
    server-side sort). NaN values sort last with the column path.
    """
    if skip < 0 or limit < 0:
        raise ValueError("skip and limit must be >= 0")
    ranges = dict(ranges or {})

    def read(aid: str) -> list[Document]:
        cols = None if filter else _columns(db, aid)
        if cols is not None and sort_by in cols and all(f in cols for f in ranges):
            mask = _in_ranges(cols, ranges)
            idx, key = cols["index"][mask], cols[sort_by][mask].astype(np.float64)
            if descending:
                key = -key  # NaN stays NaN, and lexsort puts NaN last
            order = np.lexsort((idx, key))[skip : skip + limit]
            wanted = [f for f, on in (projection or {}).items() if on and f != "_id"]
            if wanted and all(f in cols for f in wanted):  # served from the columns alone
                picked = {f: cols[f][mask][order].tolist() for f in wanted}
                return [{f: picked[f][row] for f in wanted} for row in range(len(order))]
            return _fetch(db, dictionary_id, aid, idx[order].tolist(), projection)
        query: dict[str, Any] = dict(filter or {})
        for field, (lo, hi) in ranges.items():
            bounds = {op: v for op, v in (("$gte", lo), ("$lte", hi)) if v is not None}
            if bounds:
                query[field] = bounds
        query.update(dictionary_id=dictionary_id, analysis_id=aid)
        cursor = db[FEATURES].find(query, projection).sort([(sort_by, -1 if descending else 1), ("index", 1)])
        return list(cursor.skip(skip).limit(limit))

    return _read_active(db, dictionary_id, read, [])


def count_in_ranges(db: Database[Document], dictionary_id: str, ranges: Mapping[str, Range]) -> int | None:
    """How many features of the active analysis have ``lo <= field <= hi`` for every range
    (column fields only), or None without an active analysis."""
    cols = feature_columns(db, dictionary_id)
    return None if cols is None else int(_in_ranges(cols, ranges).sum())


def _in_ranges(cols: Mapping[str, np.ndarray], ranges: Mapping[str, Range]) -> np.ndarray:
    mask = np.ones(cols["index"].shape, dtype=bool)
    for field, (lo, hi) in ranges.items():
        if lo is not None:
            mask &= cols[field] >= lo
        if hi is not None:
            mask &= cols[field] <= hi
    return mask


def _fetch(
    db: Database[Document], dictionary_id: str, aid: str, indices: list[int], projection: Mapping[str, Any] | None
) -> list[Document]:
    if not indices:
        return []
    proj = dict(projection) if projection else None
    if proj is not None and any(v for v in proj.values()) and not proj.get("index", 0):
        proj["index"] = 1  # needed to restore the requested order
    docs = db[FEATURES].find({"dictionary_id": dictionary_id, "analysis_id": aid, "index": {"$in": indices}}, proj)
    by_index = {d["index"]: d for d in docs if "index" in d}
    return [by_index[i] for i in indices if i in by_index]


def _columns(db: Database[Document], aid: str) -> dict[str, np.ndarray] | None:
    key = (db.name, aid)
    if key in _COLUMNS_CACHE:
        _COLUMNS_CACHE.move_to_end(key)
        return _COLUMNS_CACHE[key]
    doc = db[ANALYSES].find_one({"_id": aid}, {"columns": 1, "status": 1})
    packed = (doc or {}).get("columns")
    cols = {name: unpack_array(p) for name, p in packed.items()} if packed else None
    if doc is not None and doc.get("status") == "active":  # immutable from now on: safe to cache
        _COLUMNS_CACHE[key] = cols
        while len(_COLUMNS_CACHE) > _COLUMNS_CACHE_SIZE:
            _COLUMNS_CACHE.popitem(last=False)
    return cols


def _read_active(db: Database[Document], dictionary_id: str, read: Callable[[str], T], empty: T) -> T:
    """``read(aid)`` under the active analysis id, kept only if that id is still active after the
    read. A publish flips the id before it deletes the old documents, so a read that ends while
    its id is still active saw all of them; one that overlapped the flip may have seen part of
    them (its cursor's later batches came after the deletion) and is redone under the new id."""
    result = empty
    for _ in range(_READ_ATTEMPTS):
        aid = active_analysis_id(db, dictionary_id)
        if aid is None:
            return empty
        result = read(aid)
        if active_analysis_id(db, dictionary_id) == aid:
            return result
    return result
