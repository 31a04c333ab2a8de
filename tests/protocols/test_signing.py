"""Known answers and separation of the one signing module (``veil.protocols.signing``).

The tags are pinned as literals: they are in every signature Veil ever stored (jobs,
decisions, receipts) and in every mask key a node sends, so a changed tag would make every
existing signature fail; the known answers pin the whole signed message, tag and data.
"""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.protocols import signing
from veil.protocols.errors import ProtocolInputError, SignatureInvalid

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
MESSAGE = b'{"v":1}'

#: (domain, its tag as used since each was introduced, KEY's signature of tag + MESSAGE)
KNOWN = [
    (signing.JOB, b"veil-job-v1\n",
     "dab65d4ac3c3ec24152c9e29c02ca8973a258b8287952589fd63f2a1d6df7c8f"
     "31274d438fe67a2310b4d153da81d24b458fba6f7605de0530d4752cc92de50f"),
    (signing.DECISION, b"veil-decision-v1\n",
     "19dc46a391b2b6c6660c4393c4d0247f1baaf795804049820aa93bc96ff0cb76"
     "710d4b0bd01b4a832a6d635cab29e7b271636e1d8220a9505fef079a49e0a90d"),
    (signing.RECEIPT, b"veil-receipt-v1\n",
     "c59c9f6af5f25012e1a66c492a8a885c11a191e095f28d781ef2134c12648455"
     "69fd13b13b5c60e37361e360f746311fffd9f597ad5c2a3ffc070c99e7c13d09"),
    (signing.MASK_KEY, b"veil-mask-key-v1\n",
     "35909fe7a9b8246a5ba97c7d627921f59841b2be1c8eb23127a170c9693c48ef"
     "c647f07d6770838422149a7eca7ba11be1853d498823a2e1ee8ba9d71cd9200a"),
]


def test_the_table_holds_exactly_the_known_domains() -> None:
    assert signing.DOMAINS == tuple(d for d, _, _ in KNOWN)
    assert KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() == PUBLIC_HEX


@pytest.mark.parametrize(("domain", "tag", "signature"), KNOWN, ids=lambda v: getattr(v, "what", ""))
def test_known_answer(domain: signing.Domain, tag: bytes, signature: str) -> None:
    assert domain.tag == tag
    assert signing.sign(KEY, domain, MESSAGE).hex() == signature
    signing.verify(KEY.public_key(), domain, MESSAGE, bytes.fromhex(signature))


@pytest.mark.parametrize(("domain", "tag", "signature"), KNOWN, ids=lambda v: getattr(v, "what", ""))
def test_a_signature_made_before_the_module_still_verifies(
        domain: signing.Domain, tag: bytes, signature: str) -> None:
    """What the node signed by hand (``key.sign(TAG + data)``) verifies through the module."""
    signing.verify(KEY.public_key(), domain, MESSAGE, KEY.sign(tag + MESSAGE))


@pytest.mark.parametrize(("one", "other"), list(itertools.permutations(signing.DOMAINS, 2)),
                         ids=lambda d: d.what)
def test_a_signature_under_one_domain_fails_under_every_other(
        one: signing.Domain, other: signing.Domain) -> None:
    sig = signing.sign(KEY, one, MESSAGE)
    with pytest.raises(SignatureInvalid, match=f"^{other.what} signature does not verify"):
        signing.verify(KEY.public_key(), other, MESSAGE, sig)


@pytest.mark.parametrize("domain", signing.DOMAINS, ids=lambda d: d.what)
def test_tampered_data_fails(domain: signing.Domain) -> None:
    sig = signing.sign(KEY, domain, MESSAGE)
    for data in (b'{"v":2}', MESSAGE + b" ", b"", MESSAGE[:-1]):
        with pytest.raises(SignatureInvalid, match=domain.what):
            signing.verify(KEY.public_key(), domain, data, sig)


@pytest.mark.parametrize("domain", signing.DOMAINS, ids=lambda d: d.what)
def test_tampered_or_malformed_signature_fails(domain: signing.Domain) -> None:
    sig = signing.sign(KEY, domain, MESSAGE)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    for bad in (flipped, sig[:-1], sig + b"\0", b"", bytes(64)):
        with pytest.raises(SignatureInvalid, match=domain.what):
            signing.verify(KEY.public_key(), domain, MESSAGE, bad)


def test_a_signature_by_another_key_fails() -> None:
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    with pytest.raises(SignatureInvalid, match="^job signature does not verify"):
        signing.verify(KEY.public_key(), signing.JOB, MESSAGE,
                       signing.sign(other, signing.JOB, MESSAGE))


def test_signature_invalid_is_a_protocol_input_error_with_nothing_chained() -> None:
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(KEY.public_key(), signing.RECEIPT, MESSAGE, bytes(64))
    assert isinstance(info.value, ProtocolInputError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_domain_outside_the_table_is_refused() -> None:
    rogue = signing.Domain("job", b"veil-job-v1\n")  # equal to JOB: the table is by value
    assert signing.sign(KEY, rogue, MESSAGE) == signing.sign(KEY, signing.JOB, MESSAGE)
    for outside in (signing.Domain("note", b"veil-note-v1\n"), signing.Domain("job", b"x\n")):
        with pytest.raises(AssertionError, match="not in the signing table"):
            signing.sign(KEY, outside, MESSAGE)
        with pytest.raises(AssertionError, match="not in the signing table"):
            signing.verify(KEY.public_key(), outside, MESSAGE, bytes(64))


def test_no_domain_tag_is_a_prefix_of_another() -> None:
    for a, b in itertools.permutations(signing.DOMAINS, 2):
        assert not b.tag.startswith(a.tag), (a, b)
    signing._check_table(signing.DOMAINS)


@pytest.mark.parametrize(("table", "problem"), [
    ((signing.JOB, signing.Domain("job v", b"veil-job-v1\nv2\n")), "is a prefix of"),
    ((signing.JOB, signing.Domain("job", b"veil-jobs-v1\n")), "same name"),
    ((signing.Domain("bare", b"veil-bare"),), "end with a newline"),
    ((signing.Domain("note", b"veil.fed/node\n"),), "start with b'veil-'"),
])
def test_the_table_check_refuses_a_bad_table(table: tuple[signing.Domain, ...],
                                             problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        signing._check_table(table)
