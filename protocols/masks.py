"""Pairwise masks for secure sums: pure functions, no gRPC, no node state.

Per run, every node of a job makes a fresh X25519 key and states it (:func:`statement`):
the statement binds the key to the job, the run and the node, and the node signs it with its
own signing key under ``veil.protocols.signing.MASK_KEY`` (see ``veil.node.kinds.sum``). From
every other node's key, a node derives one pairwise mask vector per pair (:func:`masks`); the
vectors of all the nodes of a job sum to zero mod ``n``, so the masks cancel only in the
total and each single part is uniform noise.

A key that makes an all-zero shared secret (a low-order point) would make a pair's mask
public; it is refused (:class:`InvalidMaskKey`), as is a statement for another job, run or
node (a replayed key) and any malformed statement.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.protocols.canonical import canonical_json
from veil.protocols.errors import ProtocolInputError

__all__ = ["MASK_DOMAIN", "InvalidMaskKey", "expand", "masks",
           "open_statement", "raw_public", "statement"]

#: the HKDF salt of every pairwise mask
MASK_DOMAIN = b"veil-sum-masks-v1"
#: each mask value is drawn from this many bits more than n, then reduced mod n
BIAS_BITS = 128


class InvalidMaskKey(ProtocolInputError):
    """A mask key statement that is malformed, bound to another job, run or node, or a
    low-order point. ``node`` is the node the key claims to be from."""

    def __init__(self, node: str, problem: str) -> None:
        self.node = node
        super().__init__(f"the mask key of node {node[:64]!r} {problem}")


def raw_public(public: x25519.X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def statement(job: str, run_id: str, node: str, public: x25519.X25519PublicKey) -> bytes:
    """The bytes a node signs for its key of (job, run): canonical JSON."""
    return canonical_json({"job": job, "run": run_id, "node": node,
                           "x25519": raw_public(public).hex()})


def open_statement(data: bytes, job: str, run_id: str, node: str) -> bytes:
    """The 32-byte X25519 key in ``data``, checked to be bound to exactly (job, run, node)."""
    try:
        doc = json.loads(data)
        public = bytes.fromhex(doc["x25519"])
        bound = (doc["job"], doc["run"], doc["node"])
    except (ValueError, KeyError, TypeError):
        raise InvalidMaskKey(node, "is malformed") from None
    if bound != (job, run_id, node):
        raise InvalidMaskKey(node, "is for another job, run or node: a replayed key")
    if len(public) != 32:
        raise InvalidMaskKey(node, f"must be 32 bytes, got {len(public)}")
    return public


def masks(job: str, run_id: str, nodes: Sequence[str], me: str,
          private: x25519.X25519PrivateKey, publics: Mapping[str, bytes], n: int,
          count: int) -> list[int]:
    """Node ``me``'s mask vector mod n: Σ_{j after me} m_(me,j) − Σ_{j before me} m_(j,me),
    where m_(i,j) is expanded from the X25519 secret of nodes i and j (in the job's order
    ``nodes``); the vectors of all nodes sum to zero mod n. Each value is drawn from 128 bits
    more than n and reduced, so its bias from uniform is below 2^-128."""
    width = (n.bit_length() + BIAS_BITS + 7) // 8
    total = [0] * count
    mine = list(nodes).index(me)
    for j, other in enumerate(nodes):
        if other == me:
            continue
        try:
            shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(publics[other]))
        except ValueError:  # OpenSSL refuses an all-zero shared secret
            shared = bytes(32)
        if shared == bytes(32):
            raise InvalidMaskKey(other, "is a low-order point")
        first, second = (me, other) if mine < j else (other, me)
        stream = expand(shared, f"{job}|{run_id}|{first}|{second}|{n}|{count}".encode(),
                        width * count)
        sign = 1 if mine < j else -1
        for i in range(count):
            total[i] += sign * int.from_bytes(stream[i * width:(i + 1) * width], "big")
    return [t % n for t in total]


def expand(secret: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 to a key, then SHAKE-256 to ``length`` bytes (HKDF stops at 8 KiB)."""
    prk = HKDF(algorithm=hashes.SHA256(), length=32, salt=MASK_DOMAIN, info=info).derive(secret)
    return hashlib.shake_256(prk).digest(length)
