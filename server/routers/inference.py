"""Live inference: a feature's activations on posted text, and a text's strongest features."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from pymongo.database import Database

from saes.store import query
from server.contract import errors
from server.deps import LiveCache, get_db, get_live_cache, get_settings
from server.settings import Settings

router = APIRouter(tags=["inference"], responses=errors(
    400, 404, 409, 413, 422, _413="Request body over SAES_MAX_REQUEST_BYTES, or text over SAES_MAX_TEXT_CHARS"))


class TextIn(BaseModel):
    text: str = Field(..., min_length=1)


def _live(db: Database, dictionary_id: str, text: str, settings: Settings, cache: LiveCache):
    if len(text) > settings.max_text_chars:
        raise HTTPException(413, f"text longer than {settings.max_text_chars} characters")
    doc = query.get_dictionary(db, dictionary_id)
    if doc is None:
        raise HTTPException(404, f"no dictionary {dictionary_id!r}")
    sae_path = (doc.get("provenance") or {}).get("sae_path")
    if not sae_path:
        raise HTTPException(409, f"dictionary {dictionary_id!r} records no SAE path; re-run python -m saes.analyze")
    return cache.get(sae_path)


@router.post("/dictionaries/{dictionary_id}/features/{index}/activations")
def feature_activations(dictionary_id: str, index: int, body: TextIn, db: Database = Depends(get_db),
                        settings: Settings = Depends(get_settings), cache: LiveCache = Depends(get_live_cache)) -> dict[str, Any]:
    """Per-token activations of feature ``index`` on ``text`` (tokens include the BOS token)."""
    live = _live(db, dictionary_id, body.text, settings, cache)
    if not 0 <= index < live.sae.d_sae:
        raise HTTPException(404, f"dictionary {dictionary_id!r} has no feature {index}")
    result = live.activations(body.text)
    return {"index": index, "tokens": result.tokens, "values": result.acts_TF[:, index].tolist()}


@router.post("/dictionaries/{dictionary_id}/top-features")
def top_features(dictionary_id: str, body: TextIn, n: int = Query(10, ge=1, le=100), db: Database = Depends(get_db),
                 settings: Settings = Depends(get_settings), cache: LiveCache = Depends(get_live_cache)) -> dict[str, Any]:
    """The ``n`` features with the largest activation on any token of ``text`` (strongest first),
    each with its per-token activations."""
    live = _live(db, dictionary_id, body.text, settings, cache)
    result = live.activations(body.text)
    max_F = result.acts_TF.max(dim=0).values
    values, indices = max_F.topk(min(n, max_F.numel()))
    features = [{"index": int(i), "max_activation": float(v), "values": result.acts_TF[:, i].tolist()}
                for i, v in zip(indices, values) if v > 0]  # fmt: skip
    return {"tokens": result.tokens, "features": features}
