"""Store documents -> the JSON shapes of the API (see ``/docs``): packed arrays become lists,
ExampleSets become lists of examples with token strings, ids and dates become strings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId

from saes.analysis.documents import expand_examples
from saes.store.arrays import is_packed_array, unpack_array

EXAMPLE_KEYS = ("value", "tokens", "acts", "center")


def to_json(value: Any) -> Any:
    """A JSON-ready copy of a stored document (NaN/inf become None)."""
    if is_packed_array(value):
        return to_json(unpack_array(value).tolist())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items() if k != "_id" or not isinstance(v, ObjectId)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (ObjectId, datetime)):
        return str(value)
    return value


def examples_json(example_set: Mapping[str, Any] | None, strings: list[str]) -> list[dict[str, Any]]:
    """An ExampleSet as ``[{value, tokens: [str], acts: [float], center}]`` (``center``: the firing token)."""
    if not example_set:
        return []
    return [{k: to_json(e[k]) for k in EXAMPLE_KEYS} for e in expand_examples(example_set, strings)]


def effects_json(side: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One side of the logit effects as ``[{token, value}]``, strongest first."""
    return [{"token": t, "value": to_json(float(v))} for t, v in zip(side["tokens"], unpack_array(side["values"]))]


def feature_json(doc: Mapping[str, Any], dictionary_id: str, d_sae: int | None) -> dict[str, Any]:
    """A stored feature document as the API's ``Feature``."""
    strings = doc.get("strings") or []
    logits, neighbours = doc.get("logits"), doc.get("neighbours")
    scalars = ("index", "count", "density", "max_activation", "mean_activation", "min_activation")
    return {
        **{k: to_json(doc.get(k)) for k in scalars},
        "dictionary_id": dictionary_id,
        "d_sae": d_sae,
        "histogram": to_json(doc.get("histogram")),
        "top": examples_json(doc.get("top"), strings),
        "bands": [
            {**{k: to_json(b[k]) for k in ("lo", "hi", "count", "fraction")}, "examples": examples_json(b.get("examples"), strings)}
            for b in doc.get("bands") or []
        ],
        "random": examples_json(doc.get("random"), strings),
        "logits": None if logits is None else {"top": effects_json(logits["top"]), "bottom": effects_json(logits["bottom"])},
        "neighbours": None if neighbours is None else [
            {"index": int(i), "cosine": to_json(float(c))}
            for i, c in zip(unpack_array(neighbours["index"]), unpack_array(neighbours["cosine"]))
        ],
    }  # fmt: skip


def dictionary_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of the dictionaries table."""
    prov, metrics, config = doc.get("provenance") or {}, doc.get("metrics") or {}, doc.get("config") or {}
    return to_json({
        "id": doc["_id"],
        "model": prov.get("model_name"),
        "site": prov.get("hook_name"),
        "variant": config.get("architecture"),
        "d_sae": config.get("d_sae"),
        "l0": metrics.get("l0"),
        "explained_variance": metrics.get("explained_variance"),
        "analyzed": doc.get("active_analysis_id") is not None,
    })  # fmt: skip

