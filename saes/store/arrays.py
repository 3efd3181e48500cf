"""Compact array storage in BSON: an array becomes ``{"dtype", "shape", "data": Binary}``.

The data are the array's raw little-endian bytes (C order), so a float16/float32 array round-trips
bit for bit and costs 2/4 bytes an element instead of ~9-16 as a BSON list of doubles. The
sub-document is self-describing: a JavaScript reader can decode it with a typed array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from bson.binary import Binary

# Only plain numeric dtypes: a dtype read back from the database must never be able to name
# object arrays or anything else that np.dtype() would accept.
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
)


def pack_array(array: Any, dtype: str | np.dtype | None = None) -> dict[str, Any]:
    """Pack an array (numpy, a CPU torch tensor, or a nested list) into a BSON-ready sub-document.

    ``dtype`` casts first (e.g. ``"float16"`` for activations); by default the array keeps its own
    dtype, which must be one of :data:`ALLOWED_DTYPES`. torch tensors must not be bfloat16 (cast
    them with ``.float()``: numpy has no bfloat16).
    """
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    name = arr.dtype.name
    if name not in ALLOWED_DTYPES:
        raise TypeError(f"pack_array: dtype {name!r} is not storable; use one of {sorted(ALLOWED_DTYPES)}")
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return {"dtype": name, "shape": [int(n) for n in arr.shape], "data": Binary(little.tobytes())}


def unpack_array(packed: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`pack_array`: a new, writable array with the stored dtype and shape."""
    try:
        name, shape, data = packed["dtype"], packed["shape"], packed["data"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"unpack_array: not a packed array: {type(packed).__name__}") from e
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"unpack_array: unsupported dtype {name!r}")
    dt = np.dtype(name).newbyteorder("<")
    flat = np.frombuffer(bytes(data), dtype=dt)
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if flat.size != expected:
        raise ValueError(f"unpack_array: {flat.size} elements stored, shape {list(shape)} needs {expected}")
    return flat.reshape(shape).astype(np.dtype(name), copy=True)


def is_packed_array(value: Any) -> bool:
    """Whether ``value`` looks like the output of :func:`pack_array`."""
    return isinstance(value, Mapping) and {"dtype", "shape", "data"} <= value.keys() and len(value) == 3


def to_bson_value(value: Any) -> Any:
    """Make ``value`` BSON-encodable: numpy scalars become Python numbers, numpy arrays are packed
    with :func:`pack_array` (keeping their dtype), containers are converted recursively."""
    if isinstance(value, np.ndarray):
        return pack_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_bson_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_bson_value(v) for v in value]
    return value
