"""ECDH private set intersection over X25519: pure steps, no gRPC, no node state.

The protocol between two nodes A and B (semi-honest model), for one job and one run:

1. each side normalizes its keys (:func:`normalize`, the mode the job declares) and hashes
   every distinct key to a point with the job's domain separator (:func:`prepare`);
2. each side blinds its own points with a fresh secret scalar of the run (:func:`blind`) and
   sends them; the other side blinds them again with its own scalar (the same function:
   blinding is commutative, ``blind(a, blind(b, P)) == blind(b, blind(a, P))``);
3. the doubly blinded sets are compared (:func:`match`), after a :func:`shuffle` where the
   mode must hide which of the peer's items matched.

Points travel as *packed* bytes: concatenated 32-byte X25519 u-coordinates, never one
object per item. :class:`BlindPool` blinds batches on every core, in order, while the caller
sends or receives the previous ones.

Scalar multiplication uses libsodium (``nacl.bindings.crypto_scalarmult``): it is the same
RFC 7748 X25519 function as ``cryptography``'s ``X25519PrivateKey.exchange`` (the tests pin
both to the RFC's vectors), without building two key objects per point, which costs 1.5x.

Every point a peer sends is checked: a batch whose length is not a multiple of 32, a
non-canonical encoding (top bit set or ``u >= 2^255 - 19``) and a point of small order (its
product is the identity, which would let a peer learn nothing but make every item match
every other) are refused with :class:`InvalidPoint`, naming the offset of the point.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import sys
import unicodedata
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal, get_args

import nacl.bindings
import nacl.exceptions

from veil.protocols.errors import ProtocolInputError

__all__ = ["DOMAIN_PREFIX", "MAX_ITEM_BYTES", "MAX_JOB_ID_BYTES", "MODES", "POINT_BYTES",
           "BlindPool", "InvalidItem", "InvalidPoint", "InvalidScalar", "Mode", "Normalized",
           "UnknownMode", "blind", "domain", "hash_to_point", "match", "new_scalar",
           "normalize", "normalize_all", "permutation", "permute", "points", "prepare", "shuffle",
           "unique"]

#: size of one packed point (an X25519 u-coordinate, little-endian)
POINT_BYTES = 32
#: the prefix of every per-job domain separator
DOMAIN_PREFIX = b"veil-psi-v1\n"
#: a job id longer than this (UTF-8) is refused by :func:`domain`
MAX_JOB_ID_BYTES = 256
#: a key longer than this (UTF-8, after normalization) is refused by :func:`hash_to_point`
MAX_ITEM_BYTES = 4096

_P = 2**255 - 19

Mode = Literal["exact", "trimmed", "casefold", "digits", "e164"]
MODES: tuple[str, ...] = get_args(Mode)


class UnknownMode(ProtocolInputError):
    """A normalization mode that is not one of :data:`MODES`."""

    def __init__(self, mode: str) -> None:
        super().__init__(f"unknown normalization mode {mode[:64]!r}; expected one of "
                         f"{', '.join(MODES)}")


class InvalidItem(ProtocolInputError):
    """A key too long to hash, or a job id that cannot make a domain separator."""


class InvalidScalar(ProtocolInputError):
    """A blinding scalar that is not 32 bytes."""


class InvalidPoint(ProtocolInputError):
    """A packed batch of points that is malformed: a length not a multiple of 32, or a point
    (at ``index``, byte offset ``index * 32``, in batch ``batch`` when known) that is not
    canonical or of small order."""

    def __init__(self, index: int | None, problem: str, batch: int | None = None) -> None:
        self.index = index
        self.problem = problem
        self.batch = batch
        where = "" if batch is None else f"batch {batch}: "
        if index is not None:
            where += f"point {index} (byte offset {index * POINT_BYTES}): "
        super().__init__(where + problem)

    def __reduce__(self) -> tuple[type[InvalidPoint], tuple[int | None, str, int | None]]:
        # raised in a pool worker and pickled back to the caller with its fields intact
        return (InvalidPoint, (self.index, self.problem, self.batch))


# --- normalization -------------------------------------------------------------------------

_E164_SEPARATORS = frozenset(" -./()")


def normalize(value: str, mode: Mode) -> str | None:
    """``value`` in the job's normal form, or None when it has none (the caller skips it).

    Every mode applies Unicode NFKC first: compatibility forms fold to their plain form
    (full-width ``"１２３"`` becomes ``"123"``, a no-break or ideographic space becomes a
    space, a ligature ``"ﬁ"`` becomes ``"fi"``). Then:

    - ``exact``: nothing more; the key is compared as written.
    - ``trimmed``: leading and trailing Unicode whitespace removed (``str.strip``: spaces,
      tabs, newlines, U+2000..U+200A, U+3000 ...); inner whitespace is kept.
    - ``casefold``: ``trimmed``, then ``str.casefold`` (full Unicode case folding:
      ``"Straße"`` and ``"STRASSE"`` agree), then NFKC again so the result is stable.
    - ``digits``: only the ASCII digits 0-9 are kept, everything else is dropped (for phone
      numbers written in any layout; digits of other scripts, which NFKC keeps, are dropped).
    - ``e164``: a phone number with its country code: ``+`` (or a leading ``00``) then 8 to
      15 digits, the first not 0, with spaces, ``-``, ``.``, ``/`` and parentheses allowed
      between them and a trunk ``(0)`` after the country code dropped
      (``"+44 (0)20 7946 0958"`` is ``"+442079460958"``). Anything else (a letter, a
      number without a country code, too few or too many digits) has no normal form.

    In every mode, a value that is empty after normalization has no normal form: an empty
    key names nobody and would match every other empty key.
    """
    if mode not in MODES:
        raise UnknownMode(str(mode))
    text = unicodedata.normalize("NFKC", value)
    if mode == "trimmed":
        text = text.strip()
    elif mode == "casefold":
        text = unicodedata.normalize("NFKC", text.strip().casefold())
    elif mode == "digits":
        text = "".join(c for c in text if "0" <= c <= "9")
    elif mode == "e164":
        return _e164(text)
    return text or None


def _e164(text: str) -> str | None:
    text = text.strip()
    if text.startswith("+"):
        body = text[1:]
    elif text.startswith("00"):
        body = text[2:]
    else:
        return None
    body = body.replace("(0)", "", 1)
    digits = []
    for c in body:
        if "0" <= c <= "9":
            digits.append(c)
        elif c not in _E164_SEPARATORS:
            return None
    if not 8 <= len(digits) <= 15 or digits[0] == "0":
        return None
    return "+" + "".join(digits)


@dataclass(frozen=True)
class Normalized:
    """The normal forms of a column's values, in input order (duplicates kept), and how many
    values had none and were skipped."""

    items: list[str]
    skipped: int


def normalize_all(values: Iterable[str], mode: Mode) -> Normalized:
    if mode not in MODES:
        raise UnknownMode(str(mode))
    items: list[str] = []
    skipped = 0
    for value in values:
        n = normalize(value, mode)
        if n is None:
            skipped += 1
        else:
            items.append(n)
    return Normalized(items, skipped)


# --- hashing to the curve ------------------------------------------------------------------

def domain(job_id: str) -> bytes:
    """The domain separator of a job: ``DOMAIN_PREFIX || u16 length || job id (UTF-8)``.

    It is self-delimiting, so ``domain(job) || item`` never collides across jobs: the same
    key hashes to unrelated points in two jobs, and points of one job are useless in another.
    """
    raw = job_id.encode()
    if not raw:
        raise InvalidItem("the job id of a PSI domain is empty; expected the job's id")
    if len(raw) > MAX_JOB_ID_BYTES:
        raise InvalidItem(f"the job id of a PSI domain is {len(raw)} bytes; expected at most "
                          f"{MAX_JOB_ID_BYTES}")
    return DOMAIN_PREFIX + len(raw).to_bytes(2, "big") + raw


def _canonical(digest: bytes) -> bytes:
    # X25519 ignores bit 255 (RFC 7748 decodeUCoordinate); clearing it here, and reducing the
    # 2^-250-rare value >= p, gives every point one encoding, so blind() can refuse the rest
    u = int.from_bytes(digest, "little") & ((1 << 255) - 1)
    return (u % _P).to_bytes(POINT_BYTES, "little")


def hash_to_point(domain: bytes, item: str) -> bytes:
    """``SHA-256(domain || u32 length || item as UTF-8)``, used as an X25519 u-coordinate.

    Why a hash straight to a u-coordinate is sound for X25519 (this is the choice of
    SecretFlow's ``psi`` library, whose ECDH-PSI over Curve25519 uses the SHA-256 of an item
    as the point, ``HashToCurve`` in ``psi/cryptor/sodium_curve25519_cryptor.cc``):

    - every 32-byte string is a u-coordinate of a point either on Curve25519 or on its
      quadratic twist; the X25519 ladder computes ``x([k]Q)`` on whichever it is;
    - the twist is secure too (its order is ``4 * prime`` of 253 bits, which is why RFC 7748
      lets X25519 accept any input): discrete logs, and so the blinding, are hard on both;
    - scalars are clamped (multiples of 8, top bit fixed), so a small-order component of a
      hashed point (cofactor 8 on the curve, 4 on the twist) is cleared and a product is
      the identity only for a small-order input, which :func:`blind` refuses;
    - multiplication commutes on the curve and on the twist alike
      (``[a][b]Q = [b][a]Q`` in either group), so two parties' blindings agree whatever
      group an item lands in.

    The point is the hash itself, not a uniformly random curve point, which is fine here: the
    protocol needs only that distinct keys give distinct points (collision resistance) and
    that blinded points reveal nothing without the scalar (CDH on curve and twist, with the
    hash as a random oracle). Bit 255, which X25519 ignores, is cleared so that every point
    has one encoding.
    """
    raw = item.encode()
    if len(raw) > MAX_ITEM_BYTES:
        raise InvalidItem(f"a key is {len(raw)} bytes after normalization; expected at most "
                          f"{MAX_ITEM_BYTES}")
    return _canonical(hashlib.sha256(domain + len(raw).to_bytes(4, "big") + raw).digest())


def unique(items: Iterable[str]) -> list[str]:
    """The distinct items, each at its first occurrence: the item behind each point of
    :func:`prepare`, index for index. Each key is counted once, however often it occurs."""
    return list(dict.fromkeys(items))


def prepare(domain: bytes, items: Iterable[str]) -> bytes:
    """The packed points of the distinct ``items`` (in the order of :func:`unique`)."""
    base = hashlib.sha256(domain)
    out = bytearray()
    for item in unique(items):
        raw = item.encode()
        if len(raw) > MAX_ITEM_BYTES:
            raise InvalidItem(f"a key is {len(raw)} bytes after normalization; expected at "
                              f"most {MAX_ITEM_BYTES}")
        h = base.copy()
        h.update(len(raw).to_bytes(4, "big") + raw)
        out += _canonical(h.digest())
    return bytes(out)


# --- blinding ------------------------------------------------------------------------------

def new_scalar() -> bytes:
    """A fresh secret scalar for one run, clamped as RFC 7748 does (libsodium clamps again)."""
    s = bytearray(os.urandom(32))
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    return bytes(s)


def _check_batch(packed: bytes) -> None:
    if len(packed) % POINT_BYTES:
        raise InvalidPoint(None, f"a batch of points is {len(packed)} bytes; expected a "
                                 f"multiple of {POINT_BYTES} (whole 32-byte points)")


def points(packed: bytes) -> list[bytes]:
    """The 32-byte points of a packed batch."""
    _check_batch(packed)
    return [packed[i:i + POINT_BYTES] for i in range(0, len(packed), POINT_BYTES)]


def _is_canonical(point: bytes) -> bool:
    if point[31] & 0x80:
        return False
    return point[31] != 0x7F or int.from_bytes(point, "little") < _P


def blind(scalar: bytes, packed: bytes) -> bytes:
    """Every point of ``packed`` multiplied by ``scalar`` (X25519), packed in the same order.

    Refuses (:class:`InvalidPoint`, naming the first bad point's index and byte offset) a
    length that is not a multiple of 32, a non-canonical encoding, and a point of small order
    (0, 1, the order-8 points and their aliases: libsodium reports the all-zero product).
    """
    if len(scalar) != 32:
        raise InvalidScalar(f"a blinding scalar is {len(scalar)} bytes; expected 32")
    pts = points(packed)
    mult = nacl.bindings.crypto_scalarmult
    out = []
    for index, point in enumerate(pts):
        if not _is_canonical(point):
            raise InvalidPoint(index, "not a canonical X25519 u-coordinate (expected a value "
                                      "below 2^255 - 19 with bit 255 clear)")
        try:
            out.append(mult(scalar, point))
        except nacl.exceptions.RuntimeError:
            raise InvalidPoint(index, "a point of small order (its product is the identity); "
                                      "expected a hashed item") from None
    return b"".join(out)


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver where it exists: workers do not inherit the parent's threads, sockets or
    # secrets (a forked gRPC server is unsafe); spawn elsewhere
    method = "forkserver" if sys.platform != "win32" and sys.platform != "darwin" else "spawn"
    return multiprocessing.get_context(method)


def _warm() -> int:
    return os.getpid()


class BlindPool:
    """A process pool that blinds packed batches on every core, set up once per node.

    ``blind_batches`` keeps at most ``depth`` batches in flight (bounded memory) and yields
    their results in order, so the caller sends or receives one batch while the next ones are
    blinded. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: int | None = None, depth: int | None = None) -> None:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        self.workers = cores if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"a blind pool needs at least one worker, got {self.workers}")
        self.depth = depth or 2 * self.workers
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_pool_context())
        # start every worker now, off the hot path of the first run
        for f in [self._pool.submit(_warm) for _ in range(self.workers)]:
            f.result()

    def blind_batches(self, scalar: bytes,
                      batches: Iterable[bytes]) -> Generator[bytes, None, None]:
        """``blind(scalar, batch)`` for each batch, in order. A bad point raises
        :class:`InvalidPoint` naming its batch (counted from 0) and its index in that batch;
        the batches still in flight are cancelled."""
        if len(scalar) != 32:
            raise InvalidScalar(f"a blinding scalar is {len(scalar)} bytes; expected 32")
        pending: deque[Future[bytes]] = deque()
        it = iter(batches)
        done = 0
        try:
            for batch in it:
                pending.append(self._pool.submit(blind, scalar, batch))
                if len(pending) >= self.depth:
                    yield self._result(pending.popleft(), done)
                    done += 1
            while pending:
                yield self._result(pending.popleft(), done)
                done += 1
        finally:
            for f in pending:
                f.cancel()

    def submit(self, scalar: bytes, batch: bytes) -> Future[bytes]:
        """``blind(scalar, batch)`` on a worker; the caller keeps its own order and bound on
        how many are in flight (see :meth:`result`)."""
        if len(scalar) != 32:
            raise InvalidScalar(f"a blinding scalar is {len(scalar)} bytes; expected 32")
        return self._pool.submit(blind, scalar, batch)

    @staticmethod
    def result(future: Future[bytes], batch: int) -> bytes:
        """A submitted batch's points, or :class:`InvalidPoint` naming the batch."""
        return BlindPool._result(future, batch)

    @staticmethod
    def _result(future: Future[bytes], batch: int) -> bytes:
        try:
            return future.result()
        except InvalidPoint as e:
            raise InvalidPoint(e.index, e.problem, batch) from None

    def worker_pids(self) -> list[int]:
        """The process ids of the pool's workers (for metrics: their memory, their CPU)."""
        return sorted(getattr(self._pool, "_processes", None) or {})

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlindPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- matching ------------------------------------------------------------------------------

def match(mine: bytes, theirs: bytes) -> list[int]:
    """The indices of the points of ``theirs`` that are also in ``mine``, ascending.

    Memory is one set of ``mine``'s 32-byte points; ``theirs`` is scanned one point at a
    time. A point that occurs twice in ``theirs`` is reported at each index.
    """
    _check_batch(theirs)
    have = set(points(mine))
    return [i for i in range(len(theirs) // POINT_BYTES)
            if theirs[i * POINT_BYTES:(i + 1) * POINT_BYTES] in have]


def permutation(count: int) -> list[int]:
    """A uniformly random permutation of ``range(count)`` from the OS's CSPRNG, fast enough for
    millions of points: the order of 64-bit random keys (a tie, of probability below
    ``count^2 / 2^65``, only makes two positions keep their relative order)."""
    import numpy as np

    keys = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) if count else np.zeros(0, np.uint64)
    return np.argsort(keys, kind="stable").tolist()  # type: ignore[no-any-return]


def permute(packed: bytes, order: list[int]) -> bytes:
    """The points of ``packed`` taken in ``order`` (point ``order[i]`` at position ``i``)."""
    import numpy as np

    _check_batch(packed)
    if not order:
        return b""
    pts = np.frombuffer(packed, dtype=np.uint8).reshape(-1, POINT_BYTES)
    return pts[np.asarray(order, dtype=np.int64)].tobytes()  # type: ignore[no-any-return]


def shuffle(packed: bytes, rng: random.Random | None = None) -> bytes:
    """The points of ``packed`` in a random order (``rng``, by default the OS's CSPRNG: the
    peer must not be able to predict the permutation)."""
    pts = points(packed)
    (rng or random.SystemRandom()).shuffle(pts)
    return b"".join(pts)
