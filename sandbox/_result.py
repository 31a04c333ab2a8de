"""The canonical serialization of a result, its digest, and its numpy arrays.

The serialization is UTF-8 text, one line each, every line ending in ``\\n``:

1. ``veil-sandbox-result-v1``
2. a JSON object ``{"columns":[...],"types":[...],"rows":N,"suppressed_groups":S}``
3. N lines, one per row in result order: a JSON array with one value per column.

JSON is written compactly (``separators=(",", ":")``, non-ASCII characters as themselves,
object keys in their original order). Values are encoded as:

- NULL -> ``null``; BOOLEAN -> ``true``/``false``; integers (any width) -> JSON integers;
- FLOAT/DOUBLE -> the shortest decimal that round-trips (Python's ``repr``), and the strings
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` for the non-finite values;
- DECIMAL -> its exact decimal text as a string (``"12.50"``);
- text -> a JSON string; BLOB -> a string of lowercase hex digits;
- DATE, TIME, TIMESTAMP -> ISO 8601 text (``datetime.isoformat()``); INTERVAL ->
  ``"<days>d<seconds>s<microseconds>us"``; UUID -> its canonical text;
- LIST -> a JSON array; STRUCT and MAP -> a JSON object (keys as text).

The column types in line 2 tell the decimal strings from text. ``digest`` is the hex SHA-256
of these bytes and ``Meters.bytes_out`` their length. The row order is total (the engine
orders by the analyst's ORDER BY and then by every output column), DOUBLE sums use
compensated summation, so the same query on the same snapshots gives the same bytes.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy

HEADER = "veil-sandbox-result-v1"
_DTYPES = {
    "BOOLEAN": numpy.bool_,
    "TINYINT": numpy.int8,
    "SMALLINT": numpy.int16,
    "INTEGER": numpy.int32,
    "BIGINT": numpy.int64,
    "UTINYINT": numpy.uint8,
    "USMALLINT": numpy.uint16,
    "UINTEGER": numpy.uint32,
    "UBIGINT": numpy.uint64,
    "FLOAT": numpy.float32,
    "DOUBLE": numpy.float64,
}


def serialize(
    columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]], suppressed: int
) -> bytes:
    head = {
        "columns": list(columns),
        "types": list(types),
        "rows": len(rows),
        "suppressed_groups": suppressed,
    }
    lines = [HEADER, _dumps(head)]
    lines.extend(_dumps([_value(v) for v in row]) for row in rows)
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def digest(serialized: bytes) -> str:
    return hashlib.sha256(serialized).hexdigest()


def arrays(
    columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]
) -> dict[str, numpy.ndarray]:
    out: dict[str, numpy.ndarray] = {}
    for i, (name, type_) in enumerate(zip(columns, types)):
        values = [row[i] for row in rows]
        dtype = _DTYPES.get(type_)
        if dtype is None:
            array = numpy.empty(len(values), dtype=object)
            for j, v in enumerate(values):
                array[j] = v
        elif any(v is None for v in values):
            mask = numpy.array([v is None for v in values], dtype=bool)
            data: numpy.ndarray = numpy.array(
                [dtype(0) if v is None else v for v in values], dtype=dtype
            )
            array = numpy.ma.MaskedArray(data, mask=mask)
        else:
            array = numpy.array(values, dtype=dtype)
        array.flags.writeable = False  # the digest vouches for these values
        out[name] = array
    return out


def unique_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with repeats renamed ``name_1``, ``name_2`` ... (as DuckDB does in tables)."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 0
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return tuple(out)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (datetime.date, datetime.time)):  # datetime is a date
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return f"{v.days}d{v.seconds}s{v.microseconds}us"
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    if isinstance(v, numpy.generic):
        return _value(v.item())
    raise TypeError(f"cannot serialize a result value of type {type(v).__name__}")
