"""``/api/dictionaries``: the SAEs that have analyses."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pymongo.database import Database

from saes.store import query
from server.deps import get_db
from server.serialize import to_json

router = APIRouter(tags=["dictionaries"])


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The columns of the dictionaries table."""
    prov, metrics, config = doc.get("provenance") or {}, doc.get("metrics") or {}, doc.get("config") or {}
    return to_json({
        "id": doc["_id"],
        "model": prov.get("model_name"),
        "site": prov.get("hook_name"),
        "variant": (config.get("sae") or {}).get("architecture") or config.get("architecture"),
        "d_sae": config.get("d_sae"),
        "l0": metrics.get("l0"),
        "explained_variance": metrics.get("explained_variance"),
        "analyzed": doc.get("active_analysis_id") is not None,
    })


@router.get("/dictionaries")
def list_dictionaries(db: Database = Depends(get_db)) -> list[dict[str, Any]]:
    return [summary(d) for d in query.list_dictionaries(db)]


@router.get("/dictionaries/{dictionary_id}")
def get_dictionary(dictionary_id: str, db: Database = Depends(get_db)) -> dict[str, Any]:
    doc = query.get_dictionary(db, dictionary_id)
    if doc is None:
        raise HTTPException(404, f"no dictionary {dictionary_id!r}")
    return {**summary(doc), **to_json({k: v for k, v in doc.items() if k != "_id"})}
