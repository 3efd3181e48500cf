"""Feature explanations: a short text per feature of a dictionary, written by a person (through the
server) or by a batch explainer (autointerp), which needs no server for it.

Collection ``explanations`` (:data:`saes.store.schema.EXPLANATIONS`), one document per explained
feature, ``_id`` = ``f"{dictionary_id}:{index}"`` (:func:`explanation_id`)::

    {_id, dictionary_id: str, index: int, text: str, updated_at: datetime (UTC),
     source: "human" | "auto" | ...,     # who wrote it; documents from before this field: "human"
     explainer: str | None,              # what wrote it, e.g. an autointerp model name; None for a person
     scores: {name: float} | None}       # optional quality scores, e.g. {"detection": 0.81}

Explanations are keyed by dictionary and feature index, not by analysis: a re-analysis (a new
active analysis, see :mod:`saes.store.publish`) keeps them. Deleting the dictionary
(:func:`saes.store.publish.delete_dictionary`) deletes them too, unless asked to keep them.
Writing one replaces the previous explanation of that feature (no history is kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from numbers import Real
from typing import Any

import numpy as np
from pymongo.database import Database

from saes.store.schema import EXPLANATIONS, Document

HUMAN = "human"
AUTO = "auto"


def explanation_id(dictionary_id: str, index: int) -> str:
    """The ``_id`` of feature ``index``'s explanation: ``"{dictionary_id}:{index}"``."""
    return f"{dictionary_id}:{_check_index(index)}"


def get_explanation(db: Database[Document], dictionary_id: str, index: int) -> Document | None:
    """Feature ``index``'s explanation document (fields above; ``source`` filled in as ``"human"``
    and ``explainer``/``scores`` as None on documents written before they existed), or None."""
    doc = db[EXPLANATIONS].find_one({"_id": explanation_id(dictionary_id, index)})
    return None if doc is None else _with_defaults(doc)


def get_explanation_text(db: Database[Document], dictionary_id: str, index: int) -> str | None:
    """Just the text of feature ``index``'s explanation, or None if it has none."""
    doc = db[EXPLANATIONS].find_one({"_id": explanation_id(dictionary_id, index)}, {"text": 1})
    return None if doc is None else doc.get("text")


def put_explanation(
    db: Database[Document],
    dictionary_id: str,
    index: int,
    text: str,
    *,
    source: str = HUMAN,
    explainer: str | None = None,
    scores: Mapping[str, float] | None = None,
) -> Document:
    """Write feature ``index``'s explanation, replacing any previous one; return the stored document.

    ``source``: who wrote it (``"human"`` for a person, ``"auto"`` for an explainer); ``explainer``:
    what wrote it (e.g. the explainer model); ``scores``: finite floats by name. Does not check that
    the dictionary or feature exists (the server does, before calling this).
    """
    if not isinstance(dictionary_id, str) or not dictionary_id:
        raise ValueError(f"put_explanation: dictionary_id must be a non-empty string, got {dictionary_id!r}")
    if not isinstance(text, str):
        raise TypeError(f"put_explanation: text must be a string, got {type(text).__name__}")
    if not isinstance(source, str) or not source:
        raise ValueError(f"put_explanation: source must be a non-empty string, got {source!r}")
    if explainer is not None and not isinstance(explainer, str):
        raise TypeError(f"put_explanation: explainer must be a string or None, got {type(explainer).__name__}")
    index = _check_index(index)
    doc: Document = {
        "_id": explanation_id(dictionary_id, index),
        "dictionary_id": dictionary_id,
        "index": index,
        "text": text,
        "updated_at": datetime.now(UTC),
        "source": source,
        "explainer": explainer,
        "scores": None if scores is None else _check_scores(scores),
    }
    db[EXPLANATIONS].replace_one({"_id": doc["_id"]}, doc, upsert=True)
    return doc


def list_explanations(
    db: Database[Document], dictionary_id: str, indices: Iterable[int] | None = None
) -> list[Document]:
    """The dictionary's explanation documents sorted by feature index: all of them, or those of
    ``indices`` (features without an explanation are skipped)."""
    query: dict[str, Any] = {"dictionary_id": dictionary_id}
    if indices is not None:
        wanted = sorted({_check_index(i) for i in indices})
        if not wanted:
            return []
        query["_id"] = {"$in": [explanation_id(dictionary_id, i) for i in wanted]}
    docs = [_with_defaults(d) for d in db[EXPLANATIONS].find(query)]
    return sorted(docs, key=lambda d: d["index"])


def delete_explanations(db: Database[Document], dictionary_id: str, indices: Iterable[int] | None = None) -> int:
    """Delete the dictionary's explanations (all, or those of ``indices``); return how many."""
    query: dict[str, Any] = {"dictionary_id": dictionary_id}
    if indices is not None:
        ids = [explanation_id(dictionary_id, i) for i in indices]
        if not ids:
            return 0
        query["_id"] = {"$in": ids}
    return db[EXPLANATIONS].delete_many(query).deleted_count


def _check_index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or int(index) < 0:
        raise ValueError(f"a feature index must be a non-negative int, got {index!r}")
    return int(index)


def _check_scores(scores: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in scores.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"put_explanation: scores must map names to numbers, got {name!r}: {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"put_explanation: score {name!r} is not finite: {value!r}")
        out[name] = float(value)
    return out


def _with_defaults(doc: Document) -> Document:
    doc.setdefault("source", HUMAN)
    doc.setdefault("explainer", None)
    doc.setdefault("scores", None)
    return doc
