"""Pairwise masks (protocols.masks): they cancel in the total, are pinned by known answers,
and refuse low-order, replayed and malformed keys."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from veil.protocols import masks
from veil.protocols.errors import ProtocolInputError

N = 2**127 - 1  # the derivation works for any modulus; a small one keeps the test fast
RUN = "00" * 16


def fixed_keys(names: str) -> dict[str, x25519.X25519PrivateKey]:
    return {k: x25519.X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
            for i, k in enumerate(names)}


def publics(priv: dict[str, x25519.X25519PrivateKey]) -> dict[str, bytes]:
    return {k: masks.raw_public(v.public_key()) for k, v in priv.items()}


def test_masks_with_fixed_keys_match_known_answers() -> None:
    # computed by the derivation as it was in node/kinds/sum.py before it moved here
    want = {
        "a": ("3f02bc61c8894ba0b59bd31b233c2ccef92bdc3de838c6454e6d067b33b1b960",
              124726838485331936970196289489127149586),
        "b": ("451e5c041587c9a1cbd2e009d0dcd7194408394479d5e4cf955d2b8ba1832325",
              56158491546481336617750240589019445234),
        "c": ("e1852e7b171488e90cc207af2263605ae9922f4135c3d695881aa44979206ea7",
              159397036889125189875428077353621616634),
    }
    priv = fixed_keys("abc")
    for me, (digest, first) in want.items():
        got = masks.masks("job1", RUN, "abc", me, priv[me], publics(priv), N, 5)
        assert got[0] == first
        assert hashlib.sha256(repr(got).encode()).hexdigest() == digest


@pytest.mark.parametrize("nodes", [2, 3, 5])
def test_the_masks_of_all_nodes_sum_to_zero_mod_n_and_no_single_one_is_zero(nodes: int) -> None:
    rng = random.Random(nodes)
    names = [f"node-{i}" for i in range(nodes)]
    priv = {k: x25519.X25519PrivateKey.generate() for k in names}
    n = rng.getrandbits(2048) | (1 << 2047) | 1
    vectors = [masks.masks("j", RUN, names, me, priv[me], publics(priv), n, 7) for me in names]
    assert [sum(col) % n for col in zip(*vectors)] == [0] * 7
    assert all(all(0 <= v < n for v in vec) and any(vec) for vec in vectors)
    # another run, another job: other masks
    again = masks.masks("j", "11" * 16, names, names[0], priv[names[0]], publics(priv), n, 7)
    other = masks.masks("k", RUN, names, names[0], priv[names[0]], publics(priv), n, 7)
    assert len({tuple(vectors[0]), tuple(again), tuple(other)}) == 3


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")],
                         ids=["zero", "one"])
def test_a_low_order_mask_key_is_refused_naming_its_node(point: bytes) -> None:
    priv = fixed_keys("ab")
    pubs = {**publics(priv), "b": point}
    with pytest.raises(masks.InvalidMaskKey, match="the mask key of node 'b' is a low-order point"):
        masks.masks("job1", RUN, "ab", "a", priv["a"], pubs, N, 3)


def test_a_statement_opens_only_for_its_own_job_run_and_node() -> None:
    key = fixed_keys("a")["a"].public_key()
    st = masks.statement("job1", RUN, "a", key)
    assert masks.open_statement(st, "job1", RUN, "a") == masks.raw_public(key)
    for job, run, node in (("job2", RUN, "a"), ("job1", "11" * 16, "a"), ("job1", RUN, "b")):
        with pytest.raises(masks.InvalidMaskKey, match="a replayed key"):
            masks.open_statement(st, job, run, node)
    for bad in (b"", b"{", b"[]", b'{"job":"job1"}',
                st.replace(masks.raw_public(key).hex().encode(), b"zz")):
        with pytest.raises(masks.InvalidMaskKey, match="is malformed") as exc:
            masks.open_statement(bad, "job1", RUN, "a")
        assert isinstance(exc.value, ProtocolInputError)
    short = st.replace(masks.raw_public(key).hex().encode(), b"00" * 31)
    with pytest.raises(masks.InvalidMaskKey, match="must be 32 bytes, got 31"):
        masks.open_statement(short, "job1", RUN, "a")
