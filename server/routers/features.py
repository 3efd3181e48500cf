"""``/api/dictionaries/{id}/features``: one feature, a random alive one, sorted/filtered pages,
search, and human-written explanations (kept apart from analyses, so re-analysis keeps them)."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from pymongo.database import Database

from saes.store import query
from server.deps import get_db, require_write_token
from server.serialize import to_json

router = APIRouter(tags=["features"])
EXPLANATIONS = "explanations"
LIST_FIELDS = {"index": 1, "density": 1, "max_activation": 1, "mean_activation": 1, "count": 1}


class SortKey(str, Enum):
    density = "density"
    max_activation = "max_activation"
    index = "index"


def _require_dictionary(db: Database, dictionary_id: str) -> None:
    if query.get_dictionary(db, dictionary_id) is None:
        raise HTTPException(404, f"no dictionary {dictionary_id!r}")


def _explanation(db: Database, dictionary_id: str, index: int) -> str | None:
    doc = db[EXPLANATIONS].find_one({"_id": f"{dictionary_id}:{index}"})
    return doc["text"] if doc else None


@router.get("/dictionaries/{dictionary_id}/features")
def list_features(
    dictionary_id: str,
    sort: SortKey = SortKey.max_activation,
    descending: bool = True,
    skip: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
    density_min: float | None = Query(None, ge=0, le=1),
    density_max: float | None = Query(None, ge=0, le=1),
    max_activation_min: float | None = None,
    max_activation_max: float | None = None,
    db: Database = Depends(get_db),
) -> dict[str, Any]:
    """A page of features with their summary columns. Filters are typed ranges, never raw queries."""
    _require_dictionary(db, dictionary_id)
    ranges = {}
    if density_min is not None or density_max is not None:
        ranges["density"] = (density_min, density_max)
    if max_activation_min is not None or max_activation_max is not None:
        ranges["max_activation"] = (max_activation_min, max_activation_max)
    docs = query.list_features(db, dictionary_id, sort_by=sort.value, descending=descending, skip=skip, limit=limit,
                               ranges=ranges, projection=LIST_FIELDS)
    return {"total": query.count_features(db, dictionary_id), "skip": skip, "features": to_json(docs)}


@router.get("/dictionaries/{dictionary_id}/features/random")
def random_feature(dictionary_id: str, db: Database = Depends(get_db)) -> dict[str, Any]:
    """A uniformly random feature that fired at least once in the analysis."""
    _require_dictionary(db, dictionary_id)
    cols = query.feature_columns(db, dictionary_id)
    if cols is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no analysis")
    alive = [int(i) for i, d in zip(cols["index"], cols["density"]) if d > 0]
    if not alive:
        raise HTTPException(404, "no feature of this dictionary fired in its analysis")
    return get_feature(dictionary_id, random.choice(alive), db)


@router.get("/dictionaries/{dictionary_id}/features/{index}")
def get_feature(dictionary_id: str, index: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    doc = query.get_feature(db, dictionary_id, index)
    if doc is None:
        _require_dictionary(db, dictionary_id)
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no feature {index}")
    out = to_json(doc)
    out["explanation"] = _explanation(db, dictionary_id, index)
    return out


class Explanation(BaseModel):
    text: str = Field(..., max_length=4000)


@router.get("/dictionaries/{dictionary_id}/features/{index}/explanation")
def read_explanation(dictionary_id: str, index: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    return {"index": index, "text": _explanation(db, dictionary_id, index)}


@router.put("/dictionaries/{dictionary_id}/features/{index}/explanation", dependencies=[Depends(require_write_token)])
def write_explanation(dictionary_id: str, index: int, body: Explanation, db: Database = Depends(get_db)) -> dict[str, Any]:
    if query.get_feature(db, dictionary_id, index) is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no feature {index}")
    db[EXPLANATIONS].replace_one(
        {"_id": f"{dictionary_id}:{index}"},
        {"dictionary_id": dictionary_id, "index": index, "text": body.text, "updated_at": datetime.now(timezone.utc)},
        upsert=True,
    )
    return {"index": index, "text": body.text}
