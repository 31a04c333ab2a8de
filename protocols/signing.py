"""Domain-separated Ed25519: the one way Veil signs and verifies.

Every signed thing has a domain, and every domain is in :data:`DOMAINS`: the tag is put
before the data, so a signature made for one kind of thing (a job) never verifies as
another (a decision), even over the same bytes. No tag is a prefix of another (checked
at import), so no message of one domain can be read as a message of another.

The tags are the exact bytes Veil has always used: every stored signature still verifies.
A new kind of signed thing adds a row here, never a tag of its own elsewhere.
The node's checkpoints are signed notes (C2SP signed-note), whose text starts with the log
origin ``veil.<federation>/<node>``; every tag here starts with ``veil-``, so a note is
never a domain-tagged message either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.protocols.errors import SignatureInvalid

__all__ = ["DECISION", "DOMAINS", "JOB", "MASK_KEY", "RECEIPT", "Domain", "SignatureInvalid",
           "Signer", "sign", "verify"]


@dataclass(frozen=True)
class Domain:
    """One kind of signed thing: ``what`` names it in errors, ``tag`` goes before its bytes."""

    what: str
    tag: bytes


#: a job's canonical spec, signed by the analyst who submits it
JOB = Domain("job", b"veil-job-v1\n")
#: an approver's decision (approve, reject, revoke, withdraw) on a job
DECISION = Domain("decision", b"veil-decision-v1\n")
#: a node's receipt for a registered dataset version
RECEIPT = Domain("receipt", b"veil-receipt-v1\n")
#: a node's statement of its X25519 mask key for one run of a sum (a peer message)
MASK_KEY = Domain("mask key", b"veil-mask-key-v1\n")

#: the one table of domains
DOMAINS: tuple[Domain, ...] = (JOB, DECISION, RECEIPT, MASK_KEY)


def _check_table(domains: tuple[Domain, ...]) -> None:
    """Raise ``AssertionError`` unless every tag is unique, no prefix of another, and
    every name is unique (a programming error, caught at import)."""
    for a in domains:
        if not a.tag.startswith(b"veil-") or not a.tag.endswith(b"\n"):
            raise AssertionError(f"domain tag {a.tag!r} must start with b'veil-' and end "
                                 "with a newline")
        for b in domains:
            if a is not b and b.tag.startswith(a.tag):
                raise AssertionError(f"domain tag {a.tag!r} is a prefix of {b.tag!r}")
    if len({d.what for d in domains}) != len(domains):
        raise AssertionError("two domains have the same name")


_check_table(DOMAINS)


class Signer(Protocol):
    """Anything that holds an Ed25519 private key and signs raw bytes with it: an
    ``Ed25519PrivateKey``, or the node's ``LocalIdentity`` (which never hands out its key)."""

    def sign(self, data: bytes) -> bytes: ...


def _known(domain: Domain) -> Domain:
    if domain not in DOMAINS:
        raise AssertionError(f"domain {domain!r} is not in the signing table")
    return domain


def sign(private_key: Signer, domain: Domain, data: bytes) -> bytes:
    """The Ed25519 signature of ``domain.tag + data`` with ``private_key``."""
    return private_key.sign(_known(domain).tag + bytes(data))


def verify(public_key: Ed25519PublicKey, domain: Domain, data: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``private_key``'s signature of ``data`` under ``domain``.

    Raises :class:`SignatureInvalid` naming the domain otherwise: altered data, another
    key, another domain, or a signature that is not 64 bytes. Nothing is chained into it.
    """
    tag = _known(domain).tag
    try:
        public_key.verify(bytes(signature), tag + bytes(data))
    except (InvalidSignature, TypeError, ValueError):
        raise SignatureInvalid(
            f"{domain.what} signature does not verify with the given key: the {domain.what} "
            "was altered after signing, signed by someone else, or signed for another purpose"
        ) from None
