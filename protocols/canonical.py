"""The one canonical JSON of Veil: the bytes that are signed, hashed and logged.

``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8. Log entries, receipts, job specs, decisions, mask-key
statements and sum commitments are all built with it, so a change here changes the hash
of every entry ever logged: the bytes are pinned by known-answer tests.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]

#: built once: ``json.dumps`` with options builds a new encoder per call, which is a third
#: of the cost of re-encoding a log entry (the auditor does it for every entry)
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: Any) -> bytes:
    """``obj`` as deterministic JSON: sorted keys, no whitespace, UTF-8, no NaN or infinity.

    Raises ``ValueError`` for a NaN or infinite float and ``TypeError`` for a value JSON
    cannot hold (both are bugs of the caller, never input to be echoed).
    """
    return _ENCODER.encode(obj).encode("utf-8")
