"""``/api/dictionaries``: the SAEs that have been analyzed, with their dictionary-level statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pymongo.database import Database

from saes.store import query
from server.contract import errors
from server.deps import get_db
from server.serialize import dictionary_summary, to_json

router = APIRouter(tags=["dictionaries"])
STAT_KEYS = ("alive", "dead", "dead_fraction", "n_features", "tokens", "contexts", "l0")


@router.get("/dictionaries")
async def list_dictionaries(db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    """Every dictionary: model, site, variant, width, L0 and explained variance."""
    return [dictionary_summary(d) for d in query.list_dictionaries(db)]


@router.get("/dictionaries/{dictionary_id}", responses=errors(404))
async def get_dictionary(dictionary_id: str, db: Database = Depends(get_db)) -> dict[str, Any]:
    """One dictionary: its summary, the active analysis's statistics (alive count, density
    histogram over log10 firing rate) and the SAE's evaluation metrics."""
    doc = query.get_dictionary(db, dictionary_id)
    if doc is None:
        raise HTTPException(404, f"no dictionary {dictionary_id!r}")
    aid = doc.get("active_analysis_id")
    analysis = query.get_analysis(db, aid, {"meta.stats": 1, "meta.hook_in": 1, "finished_at": 1}) if aid else None
    stats = ((analysis or {}).get("meta") or {}).get("stats") or {}
    return {
        **dictionary_summary(doc),
        **{k: to_json(stats.get(k)) for k in STAT_KEYS},
        "density_histogram": to_json(stats.get("density_histogram")),
        "metrics": to_json(doc.get("metrics") or {}),
        "provenance": to_json(doc.get("provenance") or {}),
        "analysis_id": aid,
        "analyzed_at": to_json((analysis or {}).get("finished_at")),
    }
