"""Store documents -> JSON: packed arrays become lists, ids and dates strings."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from bson import ObjectId

from saes.store.arrays import is_packed_array, unpack_array


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
