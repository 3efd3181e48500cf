"""``/api/dictionaries/{id}/features``: one feature, a random alive one, sorted/filtered pages,
search, and human-written explanations (kept apart from analyses, so re-analysis keeps them).

Routes answered from caches or by one indexed lookup are ``async`` and run on the event loop (no
thread hand-off; measured by benchmarks/server_load.py); routes that can
take long (search's first scan of an analysis, writes) are plain ``def`` and run in the thread pool."""

from __future__ import annotations

import random
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, Field
from pymongo.database import Database

from saes.store import get_explanation_text, put_explanation, query
from server.contract import errors
from server.deps import get_db, get_dictionaries, get_feature_pages, get_search_cache, require_write_token
from server.pages import Dictionaries, FeaturePages, with_explanation
from server.search import SearchCache
from server.serialize import to_json

router = APIRouter(tags=["features"])
LIST_FIELDS = {"index": 1, "density": 1, "max_activation": 1, "mean_activation": 1, "count": 1}


class SortKey(str, Enum):
    density = "density"
    max_activation = "max_activation"
    index = "index"


def _require_dictionary(db: Database, dictionary_id: str, cache: Dictionaries | None = None) -> dict[str, Any]:
    doc = cache.get(db, dictionary_id) if cache else query.get_dictionary(db, dictionary_id)
    if doc is None:
        raise HTTPException(404, f"no dictionary {dictionary_id!r}")
    return doc


def _require_index(dictionary: dict[str, Any], index: int) -> None:
    """404 for an index outside ``[0, d_sae)`` (before it reaches the database: MongoDB integers
    are 64-bit, and a larger index would fail there as a 500)."""
    d_sae = (dictionary.get("config") or {}).get("d_sae")
    if not 0 <= index < (int(d_sae) if d_sae else 2**63):
        raise HTTPException(404, f"dictionary {dictionary.get('_id')!r} has no feature {index}")


@router.get("/dictionaries/{dictionary_id}/features", responses=errors(404, 422))
async def list_features(
    dictionary_id: str,
    sort: SortKey = SortKey.max_activation,
    descending: bool = True,
    skip: int = Query(0, ge=0, le=2**63 - 1),  # MongoDB integers are 64-bit
    limit: int = Query(50, ge=1, le=500),
    density_min: float | None = Query(None, ge=0, le=1, allow_inf_nan=False),
    density_max: float | None = Query(None, ge=0, le=1, allow_inf_nan=False),
    max_activation_min: float | None = Query(None, allow_inf_nan=False),
    max_activation_max: float | None = Query(None, allow_inf_nan=False),
    db: Database = Depends(get_db),
    dictionaries: Dictionaries = Depends(get_dictionaries),
) -> dict[str, Any]:
    """A page of features with their summary columns; ``total`` counts the features that pass the
    filters. Filters are typed ranges, never raw queries."""
    _require_dictionary(db, dictionary_id, dictionaries)
    ranges: dict[str, tuple[float | None, float | None]] = {}
    if density_min is not None or density_max is not None:
        ranges["density"] = (density_min, density_max)
    if max_activation_min is not None or max_activation_max is not None:
        ranges["max_activation"] = (max_activation_min, max_activation_max)
    docs = query.list_features(db, dictionary_id, sort_by=sort.value, descending=descending, skip=skip, limit=limit,
                               ranges=ranges, projection=LIST_FIELDS)
    return {"total": query.count_in_ranges(db, dictionary_id, ranges) or 0, "skip": skip, "limit": limit, "features": to_json(docs)}


@router.get("/dictionaries/{dictionary_id}/features/random", responses=errors(404))
async def random_feature(dictionary_id: str, db: Database = Depends(get_db), pages: FeaturePages = Depends(get_feature_pages),
                   dictionaries: Dictionaries = Depends(get_dictionaries)) -> Response:
    """A uniformly random feature that fired at least once in the analysis."""
    _require_dictionary(db, dictionary_id, dictionaries)
    cols = query.feature_columns(db, dictionary_id)
    if cols is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no analysis")
    alive = [int(i) for i, d in zip(cols["index"], cols["density"]) if d > 0]
    if not alive:
        raise HTTPException(404, "no feature of this dictionary fired in its analysis")
    return await get_feature(dictionary_id, random.choice(alive), db, pages, dictionaries)


@router.get("/dictionaries/{dictionary_id}/features/{index}", responses=errors(404, 422))
async def get_feature(dictionary_id: str, index: int, db: Database = Depends(get_db),
                pages: FeaturePages = Depends(get_feature_pages),
                dictionaries: Dictionaries = Depends(get_dictionaries)) -> Response:
    """One feature: statistics, histogram, examples (top, quantile bands, random), logit effects,
    nearest features and explanation."""
    dictionary = _require_dictionary(db, dictionary_id, dictionaries)
    _require_index(dictionary, index)
    page = pages.get(db, dictionary, index)
    if page is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no feature {index}")
    return Response(with_explanation(page, get_explanation_text(db, dictionary_id, index)), media_type="application/json")


@router.get("/dictionaries/{dictionary_id}/search", responses=errors(404, 422))
def search_features(
    dictionary_id: str,
    q: str = Query(..., min_length=1, max_length=100, description="a token or part of one, e.g. ' Paris'"),
    limit: int = Query(20, ge=1, le=200),
    db: Database = Depends(get_db),
    cache: SearchCache = Depends(get_search_cache),
) -> dict[str, Any]:
    """Features with ``q`` among their top logit effects or as the max token of a top context."""
    _require_dictionary(db, dictionary_id)
    aid = query.active_analysis_id(db, dictionary_id)
    if aid is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no analysis")
    hits = cache.get(db, dictionary_id, aid).search(q, limit)
    docs = {d["index"]: d for d in query.get_features(db, dictionary_id, [i for i, _ in hits], projection=LIST_FIELDS)}
    features = [{**to_json({k: docs[i].get(k) for k in ("index", "density", "max_activation")}), "matched": where}
                for i, where in hits if i in docs]  # fmt: skip
    return {"query": q, "features": features}


class Explanation(BaseModel):
    text: str = Field(..., max_length=4000)


@router.get("/dictionaries/{dictionary_id}/features/{index}/explanation", responses=errors(404, 422))
def read_explanation(dictionary_id: str, index: int, db: Database = Depends(get_db)) -> dict[str, Any]:
    _require_index(_require_dictionary(db, dictionary_id), index)
    return {"index": index, "text": get_explanation_text(db, dictionary_id, index)}


@router.put("/dictionaries/{dictionary_id}/features/{index}/explanation", dependencies=[Depends(require_write_token)],
            responses=errors(400, 401, 403, 404, 422))
def write_explanation(dictionary_id: str, index: int, body: Explanation, db: Database = Depends(get_db)) -> dict[str, Any]:
    _require_index(_require_dictionary(db, dictionary_id), index)
    if query.get_feature(db, dictionary_id, index) is None:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no feature {index}")
    put_explanation(db, dictionary_id, index, body.text, source="human")
    return {"index": index, "text": body.text}
