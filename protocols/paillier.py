"""Fast Paillier encryption under ``phe`` keys: fixed-base DJN randomness, pools, all cores, CRT.

Keys are ``phe``'s own (``phe.paillier.PaillierPublicKey`` / ``PaillierPrivateKey``, g = n + 1)
and ciphertexts are plain ``int``\\ s in ``[1, n^2)``: ``phe``'s ``private_key.raw_decrypt(c)``
recovers the plaintext of every ciphertext made here, and :meth:`Decryptor.decrypt` recovers
the plaintext of every ciphertext ``phe`` makes. The steps of a federated sum map to:

- a contributor: ``Encryptor(analyst_key).encrypt(m)`` for each packed plaintext (see
  ``veil.protocols.packing``), or ``ParallelEncryptor(analyst_key).encrypt_many(ms)`` on all
  cores, optionally drawing on a ``RandomnessPool`` filled ahead of time;
- the aggregator: ``Encryptor(analyst_key).add_many(cs)`` then ``.rerandomize(total)``;
- the analyst (key owner): ``Decryptor(private_key).decrypt(c)`` with CRT, then unpack.

Construction (Damgård, Jurik and Nielsen, "A generalization of Paillier's public-key system
with applications to electronic voting", IJIS 2010, §4.1; the same as SecretFlow HEU's
``paillier_zahlen``). Stock Paillier (and ``phe``) encrypts as
``c = (1 + m·n) · r^n mod n^2`` with r uniform in Z_n*: one exponentiation mod n^2 with a
k-bit exponent (k = bits of n), ~1.25·k multiplications of 2k-bit numbers. Here

    h   = -x^2 mod n, x derived from n (below); h generates (w.o.p.) the squares of Z_n*,
          up to sign: a cyclic subgroup of order about n/4
    h_s = h^n mod n^2                          an n-th residue: h_s^a = (h^a mod n)^n
    c   = (1 + m·n) · h_s^a mod n^2,  a uniform in [0, 2^E),  E >= k // 2

so ``h_s^a`` is ``r^n`` for ``r = h^a mod n`` and ``c`` is an ordinary Paillier ciphertext of
``m`` (hence phe decrypts it). Because h_s is fixed, h_s^a is a fixed-base exponentiation:
with a window of w bits we precompute ``h_s^(j·2^(w·i))`` for every row i < ceil(E/w) and
digit j < 2^w, and h_s^a costs ceil(E/w) multiplications mod n^2 (128 for k = 2048, w = 8)
instead of ~2,560: the tables cost E/w · 2^w multiplications (~0.2 s at 2048 bits) and
~16 MB (2048-bit) / ~38 MB (3072-bit) of memory, built once per key and process.

Security. (1) With a uniform over the order of h, h_s^a is uniform in the subgroup <h_s> of
the n-th residues, of small index (2 or 4) in the group of all n-th residues; telling the
ciphertexts of two plaintexts apart then means telling (1+n)^m·(random element of <h_s>)
from (1+n)^m'·(same), which is Paillier's decisional composite residuosity (DCR) assumption
restricted to a subgroup of small index: DJN's "subgroup" formulation, implied by DCR up to
that index. (2) Taking a short, E-bit, exponent instead of one uniform over the (secret)
order adds the short-exponent assumption: h_s^a for a in [0, 2^E) is indistinguishable from
h_s^a for uniform a. The best known attacks on it are generic (Pollard's kangaroo / baby-step
giant-step, ~2^(E/2) group operations); van Oorschot–Wiener's refinement needs the group
order, i.e. the factorization of n, whose holder can decrypt anyway. E = k/2 gives 2^(k/4)
(2^512 at 2048 bits), far above the ~112-bit strength of factoring a 2048-bit n, so the
randomness is never the weak point; this is the size DJN and HEU use. There is no weaker
"fast" mode: ``exponent_bits`` can only be raised. Re-randomizing multiplies by a fresh
h_s^a, giving a ciphertext distributed as a fresh encryption of the same plaintext.

Where h_s comes from: derived deterministically from the public key, never carried with it.
x = SHAKE-256("veil/paillier/djn-base/v1" ‖ k ‖ n ‖ counter) reduced mod n (128 extra bits,
negligible bias), the first counter giving x in [2, n) coprime to n. Reasons: (a) ``phe`` keys
carry only n, so every party (contributors, aggregator, auditors) computes the same base from
the key the job already binds, with no new field to transmit, approve or check; (b) nobody
chooses the base: a base supplied with the key could be picked by the key owner with a small
order, making h_s^a take few values, which would let the aggregator strip the randomness and
read every contribution; a hash of n is a nothing-up-my-sleeve choice. A random element of
Z_n* has small order only with negligible probability for any valid n, and the derivation
checks h ≠ ±1 and h_s ≠ 1.

CRT decryption (key owner): m_p = L_p(c^(p-1) mod p^2) · hp mod p with
hp = L_p(g^(p-1) mod p^2)^-1 = (-q)^-1 mod p for g = n + 1 (likewise for q), then
m = m_p + p·((m_q - m_p)·p^-1 mod q). This is what phe's ``raw_decrypt`` also does; the gain
is in precomputed gmpy2 values and in skipping phe's encoding layer.

Not constant-time: like phe's (and GMP's ``mpz_powm``) exponentiation, the table lookups
and the skipped zero digits depend on the secret exponent, so timing reveals something about
it to an observer on the same machine; the semi-honest model of DESIGN.md accepts this for a
node's own host, as phe does.

Everything that takes input validates it and raises a subclass of
``veil.protocols.errors.ProtocolInputError`` (a ``ValueError``) naming what was expected.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import operator
import os
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from types import TracebackType
from typing import NoReturn, SupportsIndex, cast

import gmpy2
from gmpy2 import mpz
from phe.paillier import EncryptedNumber, PaillierPrivateKey, PaillierPublicKey

from veil.protocols.errors import (
    InvalidCiphertext,
    InvalidPrivateKey,
    InvalidPublicKey,
    PlaintextOutOfRange,
)

__all__ = [
    "DEFAULT_WINDOW",
    "MIN_KEY_BITS",
    "MIN_SMALL_KEY_BITS",
    "Decryptor",
    "Encryptor",
    "ParallelEncryptor",
    "RandomnessPool",
    "ciphertext_from_bytes",
    "ciphertext_size",
    "ciphertext_to_bytes",
    "djn_base",
    "encrypt_many",
    "to_phe",
    "validate_public_key",
]

MIN_KEY_BITS = 2048
"""Smallest modulus accepted without ``allow_small=True`` (NIST SP 800-57: 112-bit strength)."""
MIN_SMALL_KEY_BITS = 256
"""Smallest modulus accepted even with ``allow_small=True`` (logic tests only)."""
DEFAULT_WINDOW = 8
"""Fixed-base window in bits: ceil(E/8) multiplications per h_s^a, 2^8 entries per row."""
MAX_WINDOW = 12
SMALL_PRIME_BOUND = 1 << 16
"""A modulus with a prime factor below this is rejected."""

_DOMAIN = b"veil/paillier/djn-base/v1"
_DERIVE_ATTEMPTS = 64


# --------------------------------------------------------------------------- validation


@cache
def _small_primes_product() -> mpz:
    product = mpz(1)
    p = mpz(2)
    while p < SMALL_PRIME_BOUND:
        product *= p
        p = gmpy2.next_prime(p)
    return product


def validate_public_key(public_key: object, *, allow_small: bool = False) -> PaillierPublicKey:
    """Return ``public_key`` if it is a ``phe`` public key with a plausible RSA modulus.

    Rejects (``InvalidPublicKey``): another type; g other than n + 1 or a stale n^2; a modulus
    below ``MIN_KEY_BITS`` (``MIN_SMALL_KEY_BITS`` with ``allow_small=True``, for logic tests);
    an even modulus, a perfect square or other perfect power, a prime, or one with a prime
    factor below ``SMALL_PRIME_BOUND``. None of these can be a product of two large primes.
    """
    if not isinstance(public_key, PaillierPublicKey):
        raise InvalidPublicKey(
            f"expected a phe.paillier.PaillierPublicKey, got {type(public_key).__name__}")
    n = public_key.n
    if not isinstance(n, int) or isinstance(n, bool):
        raise InvalidPublicKey(f"public key modulus must be an int, got {type(n).__name__}")
    bits = n.bit_length()
    floor = MIN_SMALL_KEY_BITS if allow_small else MIN_KEY_BITS
    if bits < floor:
        hint = "" if allow_small else " (allow_small=True admits smaller keys for logic tests)"
        raise InvalidPublicKey(
            f"public key modulus is too small: expected at least {floor} bits, got {bits}{hint}")
    if public_key.g != n + 1 or public_key.nsquare != n * n:
        raise InvalidPublicKey("public key is inconsistent: expected g = n + 1 and nsquare = n^2")
    if n % 2 == 0:
        raise InvalidPublicKey("public key modulus is even: expected a product of two odd primes")
    if gmpy2.is_square(n):
        raise InvalidPublicKey("public key modulus is a perfect square: expected p*q with p != q")
    if gmpy2.is_power(n):
        raise InvalidPublicKey("public key modulus is a perfect power: expected p*q with p != q")
    if gmpy2.gcd(n, _small_primes_product()) != 1:
        raise InvalidPublicKey(
            f"public key modulus has a prime factor below {SMALL_PRIME_BOUND}: expected a "
            "product of two large primes")
    if gmpy2.is_prime(n, 25):
        raise InvalidPublicKey("public key modulus is prime: expected a product of two primes")
    return public_key


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise PlaintextOutOfRange(f"{what} must be an integer, got bool")
    try:
        return operator.index(cast(SupportsIndex, value))
    except TypeError:
        raise PlaintextOutOfRange(
            f"{what} must be an integer, got {type(value).__name__}") from None


def _size(value: int) -> str:
    return "0" if value == 0 else f"a {value.bit_length()}-bit value"


# --------------------------------------------------------------------------- the DJN base


def djn_base(n: int) -> mpz:
    """h_s = (-x^2)^n mod n^2 with x derived from ``n`` (see the module docstring).

    Deterministic: every party holding the public key computes the same h_s.
    """
    k = n.bit_length()
    nbytes = (k + 7) // 8
    nsquare = mpz(n) * n
    for counter in range(_DERIVE_ATTEMPTS):
        seed = hashlib.shake_256(
            _DOMAIN + k.to_bytes(4, "big") + n.to_bytes(nbytes, "big")
            + counter.to_bytes(4, "big")).digest(nbytes + 16)
        x = mpz(int.from_bytes(seed, "big")) % n
        if x < 2 or gmpy2.gcd(x, n) != 1:
            continue
        h = (-(x * x)) % n
        if h in (1, n - 1):
            continue
        h_s = gmpy2.powmod(h, n, nsquare)
        if h_s != 1:
            return mpz(h_s)
    raise InvalidPublicKey(  # pragma: no cover - needs a modulus with a tiny group
        "could not derive a randomness base from the public key: the modulus is degenerate")


class _FixedBase:
    """``base^x mod modulus`` for x < 2^(rows·window) from a precomputed windowed table."""

    def __init__(self, base: mpz, modulus: mpz, exponent_bits: int, window: int) -> None:
        self.modulus = modulus
        self.window = window
        self.rows = -(-exponent_bits // window)
        self.mask = (1 << window) - 1
        one = mpz(1)
        table: list[list[mpz]] = []
        g = mpz(base)
        for _ in range(self.rows):
            row = [one, g]
            for _ in range(2, 1 << window):
                row.append(row[-1] * g % modulus)
            table.append(row)
            g = row[-1] * g % modulus  # base^(2^(w·(i+1)))
        self.table = table

    def pow(self, x: int) -> mpz:
        modulus, mask, w = self.modulus, self.mask, self.window
        acc: mpz | None = None
        for row in self.table:
            digit = x & mask
            x >>= w
            if digit:
                acc = row[digit] if acc is None else acc * row[digit] % modulus
            if not x:
                break
        assert x == 0, "exponent wider than the table"
        return mpz(1) if acc is None else acc


# --------------------------------------------------------------------------- encryption


class Encryptor:
    """Encryption and the ciphertext operations under one (someone else's) public key.

    Building one validates the key, derives h_s and builds its table (~0.2 s at 2048 bits);
    keep it for the key's lifetime. ``exponent_bits`` (default and minimum k // 2) is the
    size of the randomness exponent; ``window`` trades table memory for speed. With
    ``pool_capacity > 0`` it carries a :class:`RandomnessPool` that ``encrypt`` and
    ``rerandomize`` draw from first.
    """

    def __init__(self, public_key: PaillierPublicKey, *, allow_small: bool = False,
                 window: int = DEFAULT_WINDOW, exponent_bits: int | None = None,
                 pool_capacity: int = 0) -> None:
        self.public_key = validate_public_key(public_key, allow_small=allow_small)
        self.n = mpz(public_key.n)
        self.nsquare = self.n * self.n
        self.key_bits = int(self.n.bit_length())
        floor = self.key_bits // 2
        if exponent_bits is None:
            exponent_bits = floor
        if isinstance(exponent_bits, bool) or not isinstance(exponent_bits, int) \
                or exponent_bits < floor:
            raise PlaintextOutOfRange(
                f"exponent_bits must be an integer of at least {floor} (half of the "
                f"{self.key_bits}-bit modulus), got {exponent_bits!r}")
        if isinstance(window, bool) or not isinstance(window, int) \
                or not 1 <= window <= MAX_WINDOW:
            raise PlaintextOutOfRange(
                f"window must be an integer in [1, {MAX_WINDOW}], got {window!r}")
        self.exponent_bits = exponent_bits
        self.h_s = djn_base(int(self.n))
        self._table = _FixedBase(self.h_s, self.nsquare, exponent_bits, window)
        self.pool: RandomnessPool | None = (
            RandomnessPool(self, pool_capacity) if pool_capacity > 0 else None)

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Encryptor is not pickled (it may hold a randomness pool); "
                        "build one from the public key in each process")

    # -- randomness

    def random_exponent(self) -> int:
        """A fresh exponent a, uniform in [0, 2^exponent_bits), from the OS CSPRNG."""
        return secrets.randbits(self.exponent_bits)

    def _obfuscator_for(self, a: int) -> mpz:
        return self._table.pow(a)

    def fresh_obfuscator(self) -> mpz:
        """h_s^a for a fresh a: the ``r^n`` factor of one encryption. Never reuse one."""
        return self._table.pow(self.random_exponent())

    def _take_obfuscator(self) -> mpz:
        if self.pool is not None:
            return self.pool.take()
        return self.fresh_obfuscator()

    # -- checks

    def check_plaintext(self, m: object) -> int:
        """``m`` as an int if 0 <= m < n, else ``PlaintextOutOfRange``."""
        value = _as_int(m, "plaintext")
        if not 0 <= value < self.n:
            raise PlaintextOutOfRange(
                f"plaintext must be in [0, n) for this {self.key_bits}-bit key, got "
                f"{'a negative value' if value < 0 else _size(value)}")
        return value

    def check_ciphertext(self, c: object) -> int:
        """``c`` as an int if it is in [1, n^2) and coprime to n, else ``InvalidCiphertext``."""
        return _check_ciphertext(c, self.n, self.nsquare, self.key_bits)

    # -- encryption

    def encrypt(self, m: object) -> int:
        """Encrypt a plaintext in [0, n): (1 + m·n) · h_s^a mod n^2 with a fresh a."""
        value = self.check_plaintext(m)
        return int((1 + value * self.n) * self._take_obfuscator() % self.nsquare)

    def _encrypt_with_exponent(self, m: object, a: int) -> int:
        """SHARP, for known-answer tests only: encrypt with the given randomness exponent."""
        value = self.check_plaintext(m)
        exponent = _as_int(a, "randomness exponent")
        if not 0 <= exponent < (1 << self.exponent_bits):
            raise PlaintextOutOfRange(
                f"randomness exponent must be in [0, 2^{self.exponent_bits}), got "
                f"{'a negative value' if exponent < 0 else _size(exponent)}")
        return int((1 + value * self.n) * self._obfuscator_for(exponent) % self.nsquare)

    def encrypt_all(self, plaintexts: Iterable[object]) -> list[int]:
        """Encrypt each plaintext on this core (all are checked before any is encrypted)."""
        values = [self.check_plaintext(m) for m in plaintexts]
        return [int((1 + v * self.n) * self._take_obfuscator() % self.nsquare) for v in values]

    # -- homomorphic operations

    def add(self, a: object, b: object) -> int:
        """A ciphertext of the sum of the plaintexts of ``a`` and ``b`` (mod n)."""
        return int(self.check_ciphertext(a) * mpz(self.check_ciphertext(b)) % self.nsquare)

    def add_many(self, ciphertexts: Iterable[object]) -> int:
        """A ciphertext of the sum of all the plaintexts (mod n); at least one is required."""
        total: mpz | None = None
        count = 0
        for c in ciphertexts:
            value = mpz(self.check_ciphertext(c))
            total = value if total is None else total * value % self.nsquare
            count += 1
        if total is None:
            raise InvalidCiphertext("add_many needs at least one ciphertext, got none")
        return int(total)

    def add_vectors(self, vectors: Sequence[Sequence[object]]) -> list[int]:
        """Element-wise ``add_many`` over equally long vectors of ciphertexts."""
        if not vectors:
            raise InvalidCiphertext("add_vectors needs at least one vector, got none")
        length = len(vectors[0])
        for i, v in enumerate(vectors):
            if len(v) != length:
                raise InvalidCiphertext(
                    f"vector {i} has {len(v)} ciphertexts, expected {length} like vector 0")
        return [self.add_many(v[j] for v in vectors) for j in range(length)]

    def scalar_mul(self, c: object, k: object) -> int:
        """A ciphertext of k·m (mod n) for an integer -n < k < n. Re-randomize before sending:
        the result is as random as ``c`` only for k coprime to n, and is 1 for k = 0."""
        value = self.check_ciphertext(c)
        scalar = _as_int(k, "scalar")
        if not -self.n < scalar < self.n:
            raise PlaintextOutOfRange(
                f"scalar must be in (-n, n) for this {self.key_bits}-bit key, got "
                f"{_size(abs(scalar))}{' (negative)' if scalar < 0 else ''}")
        return int(gmpy2.powmod(value, scalar % self.n, self.nsquare))

    def rerandomize(self, c: object) -> int:
        """The same plaintext under fresh randomness: c · h_s^a mod n^2."""
        value = self.check_ciphertext(c)
        return int(value * self._take_obfuscator() % self.nsquare)

    def rerandomize_all(self, ciphertexts: Iterable[object]) -> list[int]:
        """``rerandomize`` each (all are checked before any is touched)."""
        values = [self.check_ciphertext(c) for c in ciphertexts]
        return [int(v * self._take_obfuscator() % self.nsquare) for v in values]


def _check_ciphertext(c: object, n: mpz, nsquare: mpz, key_bits: int) -> int:
    if isinstance(c, bool):
        raise InvalidCiphertext("ciphertext must be an integer, got bool")
    try:
        value = operator.index(cast(SupportsIndex, c))
    except TypeError:
        raise InvalidCiphertext(
            f"ciphertext must be an integer, got {type(c).__name__}") from None
    if not 1 <= value < nsquare:
        found = "a negative value" if value < 0 else _size(value)
        raise InvalidCiphertext(
            f"ciphertext must be in [1, n^2) for this {key_bits}-bit key, got {found}")
    if gmpy2.gcd(value, n) != 1:
        raise InvalidCiphertext(
            "ciphertext is not coprime to n: it is not a ciphertext under this key")
    return int(value)


def ciphertext_size(public_key: PaillierPublicKey) -> int:
    """Bytes of an encoded ciphertext under this key: those of n^2, big-endian, fixed."""
    return (int(public_key.nsquare).bit_length() + 7) // 8


def ciphertext_to_bytes(public_key: PaillierPublicKey, c: int) -> bytes:
    """Fixed-length big-endian encoding (``ciphertext_size`` bytes) of a valid ciphertext."""
    n = mpz(public_key.n)
    value = _check_ciphertext(c, n, n * n, int(n.bit_length()))
    return value.to_bytes(ciphertext_size(public_key), "big")


def ciphertext_from_bytes(public_key: PaillierPublicKey, data: bytes) -> int:
    """Decode and validate one ciphertext; ``InvalidCiphertext`` on a wrong length or range."""
    size = ciphertext_size(public_key)
    if len(data) != size:
        raise InvalidCiphertext(
            f"encoded ciphertext must be {size} bytes for this key, got {len(data)}")
    n = mpz(public_key.n)
    return _check_ciphertext(int.from_bytes(data, "big"), n, n * n, int(n.bit_length()))


def to_phe(public_key: PaillierPublicKey, c: int) -> EncryptedNumber:
    """Wrap a raw ciphertext as a ``phe`` ``EncryptedNumber`` (exponent 0) for phe's API."""
    n = mpz(public_key.n)
    return EncryptedNumber(public_key, _check_ciphertext(c, n, n * n, int(n.bit_length())), 0)


# --------------------------------------------------------------------------- randomness pool


class RandomnessPool:
    """Obfuscators h_s^a computed ahead of time; each is handed out exactly once.

    ``fill()`` tops it up in the calling thread; ``start()`` runs a daemon thread that keeps it
    topped up (gmpy2 holds the GIL, so this is work done while the caller waits on I/O, not
    extra cores: for cores, ``ParallelEncryptor.obfuscators(count)`` and ``extend``);
    ``take()`` pops one, or computes a fresh one if the pool is empty. The values are secrets
    (each unmasks one ciphertext): the pool refuses pickling and is never logged.
    """

    def __init__(self, encryptor: Encryptor, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise PlaintextOutOfRange(f"pool capacity must be a positive integer, got "
                                      f"{capacity!r}")
        self._encryptor = encryptor
        self.capacity = capacity
        self._values: deque[mpz] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.misses = 0
        """How many ``take()`` calls found the pool empty and computed a fresh value."""

    def __reduce__(self) -> NoReturn:
        raise TypeError("a RandomnessPool holds secrets and is not pickled")

    def __len__(self) -> int:
        return len(self._values)

    def fill(self, count: int | None = None) -> int:
        """Add up to ``count`` values (default: up to capacity); return how many were added."""
        room = self.capacity - len(self._values)
        todo = room if count is None else max(0, min(count, room))
        for _ in range(todo):
            self._values.append(self._encryptor.fresh_obfuscator())
        return todo

    def extend(self, values: Iterable[int]) -> None:
        """Add values made elsewhere (``ParallelEncryptor.obfuscators``), up to capacity."""
        for v in values:
            if len(self._values) >= self.capacity:
                break
            self._values.append(mpz(v))

    def take(self) -> mpz:
        try:
            value = self._values.popleft()
        except IndexError:
            self.misses += 1
            return self._encryptor.fresh_obfuscator()
        if self._thread is not None:
            with self._wake:
                self._wake.notify()
        return value

    def start(self) -> None:
        """Keep the pool full from a background daemon thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="veil-paillier-pool",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._wake:
            self._stop = True
            self._wake.notify()
        thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and len(self._values) >= self.capacity:
                    self._wake.wait()
                if self._stop:
                    return
            self._values.append(self._encryptor.fresh_obfuscator())


# --------------------------------------------------------------------------- all cores

_WORKER: Encryptor | None = None


def _worker_init(n: int, allow_small: bool, window: int, exponent_bits: int) -> None:
    global _WORKER
    _WORKER = Encryptor(PaillierPublicKey(n), allow_small=allow_small, window=window,
                        exponent_bits=exponent_bits)


def _worker_ready() -> int:
    assert _WORKER is not None
    return os.getpid()


def _worker_encrypt(plaintexts: list[int]) -> list[int]:
    assert _WORKER is not None
    return _WORKER.encrypt_all(plaintexts)


def _worker_obfuscators(count: int) -> list[int]:
    assert _WORKER is not None
    return [int(_WORKER.fresh_obfuscator()) for _ in range(count)]


class ParallelEncryptor:
    """Encryption on all cores: a process pool whose workers each build the tables once.

    The workers are started and their tables built in the constructor (``spawn`` start
    method: safe in a process that runs gRPC threads), so ``encrypt_many`` pays only for
    encryption. Use as a context manager, or call ``close()``.
    """

    def __init__(self, public_key: PaillierPublicKey, *, workers: int | None = None,
                 allow_small: bool = False, window: int = DEFAULT_WINDOW,
                 exponent_bits: int | None = None) -> None:
        # validate here, in the caller's process, so a bad key fails with its own message
        self._local = Encryptor(public_key, allow_small=allow_small, window=window,
                                exponent_bits=exponent_bits)
        count = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PlaintextOutOfRange(f"workers must be a positive integer, got {workers!r}")
        self.workers = count
        self._pool = ProcessPoolExecutor(
            max_workers=count, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(int(public_key.n), allow_small, window, self._local.exponent_bits))
        try:
            # one task per worker, submitted together: each spawns a worker that builds its
            # table before answering
            for f in [self._pool.submit(_worker_ready) for _ in range(count)]:
                f.result()
        except BaseException:
            self._pool.shutdown(cancel_futures=True)
            raise

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ParallelEncryptor owns processes and is not pickled")

    def __enter__(self) -> ParallelEncryptor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def _chunks(self, total: int) -> list[tuple[int, int]]:
        size = max(16, math.ceil(total / (self.workers * 4)))
        return [(i, min(total, i + size)) for i in range(0, total, size)]

    def encrypt_many(self, plaintexts: Iterable[object]) -> list[int]:
        """Encrypt every plaintext, in order; all are checked before any work is sent."""
        values = [self._local.check_plaintext(m) for m in plaintexts]
        futures = [self._pool.submit(_worker_encrypt, values[a:b])
                   for a, b in self._chunks(len(values))]
        out: list[int] = []
        for f in futures:
            out.extend(f.result())
        return out

    def obfuscators(self, count: int) -> list[int]:
        """``count`` fresh h_s^a values computed on all cores, e.g. to fill a pool."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PlaintextOutOfRange(f"count must be a non-negative integer, got {count!r}")
        futures = [self._pool.submit(_worker_obfuscators, b - a) for a, b in self._chunks(count)]
        out: list[int] = []
        for f in futures:
            out.extend(f.result())
        return out


def encrypt_many(public_key: PaillierPublicKey, plaintexts: Iterable[object], *,
                 workers: int | None = None, allow_small: bool = False) -> list[int]:
    """One-shot ``ParallelEncryptor(...).encrypt_many``: starts and stops the workers, so
    for repeated batches under one key keep a ``ParallelEncryptor`` instead."""
    with ParallelEncryptor(public_key, workers=workers, allow_small=allow_small) as pe:
        return pe.encrypt_many(plaintexts)


# --------------------------------------------------------------------------- decryption


class Decryptor:
    """CRT decryption for the key owner. Refuses pickling; holds the factors as gmpy2 values."""

    def __init__(self, private_key: PaillierPrivateKey, *, allow_small: bool = False) -> None:
        if not isinstance(private_key, PaillierPrivateKey):
            raise InvalidPrivateKey(
                f"expected a phe.paillier.PaillierPrivateKey, got {type(private_key).__name__}")
        public_key = validate_public_key(private_key.public_key, allow_small=allow_small)
        p, q = mpz(min(private_key.p, private_key.q)), mpz(max(private_key.p, private_key.q))
        n = mpz(public_key.n)
        if p * q != n or p == q or p < 3:
            raise InvalidPrivateKey("private key factors do not multiply to its public modulus")
        self.public_key = public_key
        self.n, self.nsquare, self.key_bits = n, n * n, int(n.bit_length())
        self._p, self._q = p, q
        self._psquare, self._qsquare = p * p, q * q
        self._p1, self._q1 = p - 1, q - 1
        # hp = L_p(g^(p-1) mod p^2)^-1 mod p; for g = n+1, L_p(...) = (p-1)·q mod p = -q mod p
        self._hp = mpz(gmpy2.invert(-q % p, p))
        self._hq = mpz(gmpy2.invert(-p % q, q))
        self._p_inv_q = mpz(gmpy2.invert(p, q))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Decryptor holds a private key and is not pickled; export the key "
                        "explicitly if you must")

    def __repr__(self) -> str:
        return f"<Decryptor for a {self.key_bits}-bit key>"

    def decrypt(self, c: object) -> int:
        """The plaintext in [0, n) of a ciphertext under this key."""
        value = mpz(_check_ciphertext(c, self.n, self.nsquare, self.key_bits))
        p, q = self._p, self._q
        mp = (gmpy2.powmod(value, self._p1, self._psquare) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(value, self._q1, self._qsquare) - 1) // q * self._hq % q
        return int(mp + (mq - mp) * self._p_inv_q % q * p)

    def decrypt_many(self, ciphertexts: Iterable[object]) -> list[int]:
        """Decrypt each (all are checked first: a bad one fails the batch before any work)."""
        values = [_check_ciphertext(c, self.n, self.nsquare, self.key_bits)
                  for c in ciphertexts]
        return [self.decrypt(c) for c in values]
