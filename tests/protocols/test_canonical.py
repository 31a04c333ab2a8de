"""The one canonical JSON (``veil.protocols.canonical``): its bytes are hashed into every log
entry and signed in every job, decision and receipt, so they are pinned here, and shown
identical to each of the four encoders it replaced for the values those encoders saw."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.protocols.canonical import canonical_json


def test_known_answer() -> None:
    obj = {"z": [1, None, True, False], "a": {"é": "数据", "b": -7}, "m": "a\"b\\c\n", "n": 2**80}
    assert canonical_json(obj) == (
        '{"a":{"b":-7,"é":"数据"},"m":"a\\"b\\\\c\\n","n":1208925819614629174706176,'
        '"z":[1,null,true,false]}'
    ).encode("utf-8")


def test_non_ascii_is_utf8_not_escaped() -> None:
    assert canonical_json("可用不可见") == '"可用不可见"'.encode()
    assert canonical_json("\u2014") == b'"\xe2\x80\x94"'


def test_keys_are_sorted_by_code_point_at_every_depth() -> None:
    assert canonical_json({"b": {"y": 1, "x": 2}, "B": 0, "a": 1}) == \
        b'{"B":0,"a":1,"b":{"x":2,"y":1}}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"meter": math.nan}])
def test_nan_and_infinity_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_a_value_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError):
        canonical_json({"key": b"bytes"})


# What the replaced encoders did, verbatim: the log's (entries, receipts), the job spec's
# and decision's, and the two of the sum (mask-key statements; aggregates), which left
# ensure_ascii at its default and so agree only below DEL (0x7f, which they escape): all
# they encode is hex, digits and node names ([A-Za-z0-9._-]).
_LOG = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _log_before(obj: Any) -> bytes:
    return _LOG.encode(obj).encode()


def _spec_before(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sum_before(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


_scalars = st.none() | st.booleans() | st.integers() | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(_values)
def test_bytes_are_those_of_the_log_and_job_encoders(obj: Any) -> None:
    assert canonical_json(obj) == _log_before(obj) == _spec_before(obj)


_ascii = st.text(alphabet=st.characters(max_codepoint=0x7e))


@given(st.recursive(st.none() | st.integers() | _ascii,
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(_ascii, inner, max_size=4), max_leaves=20))
def test_bytes_are_those_of_the_sum_encoders_on_ascii(obj: Any) -> None:
    assert canonical_json(obj) == _sum_before(obj)


def test_a_mask_key_statement_keeps_its_bytes() -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    from veil.protocols import masks

    public = x25519.X25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    assert masks.statement("ab" * 16, "cd" * 16, "bank-a", public) == (
        b'{"job":"' + b"ab" * 16 + b'","node":"bank-a","run":"' + b"cd" * 16
        + b'","x25519":"' + masks.raw_public(public).hex().encode() + b'"}'
    )
