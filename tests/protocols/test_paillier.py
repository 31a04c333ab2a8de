"""Veil's Paillier (protocols/paillier.py) against plain-pow known answers and against phe.

Known answers: fixed keys below (p, q in hex, generated once with phe), fixed randomness
exponents, and expected ciphertexts computed here with plain Python ``pow`` from the
construction written in the module docstring, re-implemented independently in this file.
Small keys only where the test is about logic (``allow_small=True``); the 2048-bit key
checks the real size.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import secrets
from fractions import Fraction

import gmpy2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phe import paillier as phe

from veil.protocols.errors import (
    InvalidCiphertext,
    InvalidPrivateKey,
    InvalidPublicKey,
    PlaintextOutOfRange,
    ProtocolInputError,
)
from veil.protocols.packing import Packing
from veil.protocols.paillier import (
    MIN_KEY_BITS,
    Decryptor,
    Encryptor,
    ParallelEncryptor,
    RandomnessPool,
    ciphertext_from_bytes,
    ciphertext_size,
    ciphertext_to_bytes,
    djn_base,
    encrypt_many,
    to_phe,
    validate_public_key,
)

P1024_HEX = (
    "b378570a10e5351f52136b0e3c6e37cc0700fa127ed290f8f91c95a886f260242cf0e0fcfcc7ad17"
    "87f94fb363d7fafe2890b40fc89b4e763591d69a2cbf14a5"
)
Q1024_HEX = (
    "e0b77452f02906387576ba0725f8f0349ab217beea242ef6806c1c3f9085ac80080d9b76d9117d61"
    "445db7bd50258194ab35b50e732c25c038684e904f7fd729"
)

P2048_HEX = (
    "d592eea8a756c4373cda3c283d05ac2aea140a5c010e13df16f3c1407e1b43e4200a93839fd218e7"
    "618e8146f56ca6cfd75d0d67824adee47afdb09de8d0a26a9c28e1cde9482ad965bc1736efb23700"
    "000423e24644ea63420db6edcf9659bec31a1af9ce83cc7e27a6cf7d0e0141d8f34e85e62853427f"
    "7d2be6e89bc67c97"
)
Q2048_HEX = (
    "e78abb91aac337a897f88a70db38754b7d1df5bd45ebd6934f15fa9d9c2d3c15b0eca7b92694f095"
    "b836af69315557cc1f364874aa6ebf0174b301dee673d9bc8815fd743d85b2b2bc9073575f4a3a31"
    "1959b366652fbc3346aa97b6a108cc5db686de462bf28f8bbddda56efb5c724349db0f702889ac2e"
    "cf56d228dad18585"
)

P1024, Q1024 = int(P1024_HEX, 16), int(Q1024_HEX, 16)
P2048, Q2048 = int(P2048_HEX, 16), int(Q2048_HEX, 16)
PK1024 = phe.PaillierPublicKey(P1024 * Q1024)
SK1024 = phe.PaillierPrivateKey(PK1024, P1024, Q1024)
PK2048 = phe.PaillierPublicKey(P2048 * Q2048)
SK2048 = phe.PaillierPrivateKey(PK2048, P2048, Q2048)

# SHA-256 of h_s (big-endian, the size of n^2) for the 1024-bit key: pins the derivation
H_S_1024_SHA256 = "bbc326396b90e195370e96b46521561c43c565e478476f1ba731aa103969a676"


@pytest.fixture(scope="module")
def enc() -> Encryptor:
    return Encryptor(PK1024, allow_small=True)


@pytest.fixture(scope="module")
def dec() -> Decryptor:
    return Decryptor(SK1024, allow_small=True)


def reference_h_s(n: int) -> int:
    """The base as the module docstring specifies it, with plain Python integers."""
    k = n.bit_length()
    nbytes = (k + 7) // 8
    counter = 0
    while True:
        seed = hashlib.shake_256(
            b"veil/paillier/djn-base/v1" + k.to_bytes(4, "big") + n.to_bytes(nbytes, "big")
            + counter.to_bytes(4, "big")).digest(nbytes + 16)
        x = int.from_bytes(seed, "big") % n
        if x >= 2 and gmpy2.gcd(x, n) == 1:
            h = (-x * x) % n
            if h not in (1, n - 1):
                h_s = pow(h, n, n * n)
                if h_s != 1:
                    return h_s
        counter += 1


def reference_encrypt(n: int, m: int, a: int) -> int:
    n2 = n * n
    return pow(n + 1, m, n2) * pow(reference_h_s(n), a, n2) % n2


# --------------------------------------------------------------------------- known answers


def test_derived_base_matches_the_reference_and_the_pinned_digest() -> None:
    n = PK1024.n
    h_s = reference_h_s(n)
    assert djn_base(n) == h_s
    digest = hashlib.sha256(h_s.to_bytes(ciphertext_size(PK1024), "big")).hexdigest()
    assert digest == H_S_1024_SHA256


def test_derived_base_is_an_nth_residue_that_phe_decrypts_as_zero() -> None:
    h_s = djn_base(PK1024.n)
    assert SK1024.raw_decrypt(int(h_s)) == 0


@pytest.mark.parametrize("m", [0, 1, 2**64 + 7, P1024 * Q1024 - 1],
                         ids=["0", "1", "2^64+7", "n-1"])
@pytest.mark.parametrize("a", [0, 1, 2**512 - 1, random.Random(12).getrandbits(512)],
                         ids=["0", "1", "2^512-1", "random"])
def test_known_answer_ciphertext_with_fixed_exponent(enc: Encryptor, m: int, a: int) -> None:
    c = enc._encrypt_with_exponent(m, a)
    assert c == reference_encrypt(PK1024.n, m, a)
    assert SK1024.raw_decrypt(c) == m


def test_known_answer_rerandomize_and_add_match_plain_pow(enc: Encryptor) -> None:
    n = PK1024.n
    n2 = n * n
    c1 = reference_encrypt(n, 41, 7)
    c2 = reference_encrypt(n, 1, 2**300)
    assert enc.add(c1, c2) == c1 * c2 % n2 == reference_encrypt(n, 42, 7 + 2**300)
    assert enc.scalar_mul(c1, 3) == pow(c1, 3, n2) == reference_encrypt(n, 123, 21)


def test_exponent_is_at_least_half_the_modulus_and_cannot_be_lowered() -> None:
    e = Encryptor(PK1024, allow_small=True)
    assert e.exponent_bits == 512
    assert Encryptor(PK2048).exponent_bits == 1024
    with pytest.raises(PlaintextOutOfRange, match="at least 512"):
        Encryptor(PK1024, allow_small=True, exponent_bits=511)
    wider = Encryptor(PK1024, allow_small=True, exponent_bits=700, window=5)
    c = wider._encrypt_with_exponent(9, 2**699 + 5)
    assert c == reference_encrypt(PK1024.n, 9, 2**699 + 5)
    with pytest.raises(PlaintextOutOfRange, match=r"\[0, 2\^512\)"):
        e._encrypt_with_exponent(1, 2**512)


@pytest.mark.parametrize("window", [1, 3, 7, 8, 11])
def test_every_window_gives_the_same_ciphertext(window: int) -> None:
    e = Encryptor(PK1024, allow_small=True, window=window)
    a = random.Random(window).getrandbits(512)
    assert e._encrypt_with_exponent(77, a) == reference_encrypt(PK1024.n, 77, a)


# --------------------------------------------------------------------------- phe interop


def test_phe_raw_decrypt_recovers_every_veil_ciphertext(enc: Encryptor) -> None:
    rng = random.Random(6)
    for m in [0, 1, PK1024.n - 1] + [rng.randrange(PK1024.n) for _ in range(50)]:
        c = enc.encrypt(m)
        assert SK1024.raw_decrypt(c) == m
        wrapped = to_phe(PK1024, c)
        assert wrapped.ciphertext(be_secure=False) == c and wrapped.exponent == 0


def test_crt_decrypt_recovers_phe_encrypt(dec: Decryptor) -> None:
    rng = random.Random(7)
    for value in [0, 1, -1, -(2**200), PK1024.max_int] + [
            rng.randrange(-PK1024.max_int, PK1024.max_int) for _ in range(30)]:
        c = PK1024.encrypt(value).ciphertext()
        assert dec.decrypt(c) == value % PK1024.n
        assert dec.decrypt(c) == SK1024.raw_decrypt(c)


def test_crt_decrypt_equals_phe_on_random_group_elements(dec: Decryptor) -> None:
    rng = random.Random(8)
    n2 = PK1024.nsquare
    for _ in range(30):
        c = rng.randrange(1, n2)
        if gmpy2.gcd(c, PK1024.n) == 1:
            assert dec.decrypt(c) == SK1024.raw_decrypt(c)


def test_phe_arithmetic_on_veil_ciphertexts(enc: Encryptor) -> None:
    x = to_phe(PK1024, enc.encrypt(1000)) + PK1024.encrypt(234)
    assert SK1024.decrypt(x) == 1234


def test_2048_bit_key_encrypt_rerandomize_decrypt_against_phe() -> None:
    e = Encryptor(PK2048)
    d = Decryptor(SK2048)
    ms = [0, 1, PK2048.n - 1, secrets.randbelow(PK2048.n)]
    cs = e.encrypt_all(ms)
    assert [SK2048.raw_decrypt(c) for c in cs] == ms
    assert d.decrypt_many(cs) == ms
    total = e.rerandomize(e.add_many(cs))
    assert d.decrypt(total) == sum(ms) % PK2048.n
    assert d.decrypt(PK2048.encrypt(-12345).ciphertext()) == PK2048.n - 12345
    a = random.Random(2048).getrandbits(1024)
    assert e._encrypt_with_exponent(5, a) == reference_encrypt(PK2048.n, 5, a)


# --------------------------------------------------------------------------- operations


def test_encryptions_of_one_value_differ_and_rerandomize_keeps_the_plaintext(
        enc: Encryptor, dec: Decryptor) -> None:
    cs = {enc.encrypt(5) for _ in range(20)}
    assert len(cs) == 20
    c = enc.encrypt(5)
    r = enc.rerandomize(c)
    assert r != c and dec.decrypt(r) == 5


def test_add_many_scalar_mul_and_add_vectors(enc: Encryptor, dec: Decryptor) -> None:
    n = PK1024.n
    cs = enc.encrypt_all([1, 2, 3, n - 1])
    assert dec.decrypt(enc.add_many(cs)) == 5
    assert dec.decrypt(enc.scalar_mul(cs[2], -1)) == n - 3
    assert dec.decrypt(enc.scalar_mul(cs[2], 0)) == 0
    vs = [enc.encrypt_all([i, 10 * i]) for i in range(1, 4)]
    assert dec.decrypt_many(enc.add_vectors(vs)) == [6, 60]
    with pytest.raises(InvalidCiphertext, match="vector 1 has 1 ciphertexts, expected 2"):
        enc.add_vectors([vs[0], vs[1][:1]])
    with pytest.raises(InvalidCiphertext, match="at least one"):
        enc.add_many([])


BOUND = 10**30
slot_values = st.one_of(st.sampled_from([-BOUND, BOUND, 0, -1, 1]),
                        st.integers(min_value=-BOUND, max_value=BOUND))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(addends=st.integers(1, 5), count=st.integers(1, 40), data=st.data())
def test_property_dec_of_sum_of_packed_encryptions_is_sum(
        enc: Encryptor, dec: Decryptor, addends: int, count: int,
        data: st.DataObject) -> None:
    vectors = [data.draw(st.lists(slot_values, min_size=count, max_size=count))
               for _ in range(addends)]
    spec = Packing.for_key(PK1024, lower=-BOUND, upper=BOUND, addends=addends)
    encrypted = [enc.encrypt_all(spec.pack(v)) for v in vectors]
    total = enc.rerandomize_all(enc.add_vectors(encrypted))
    assert spec.unpack(dec.decrypt_many(total), count) == [
        Fraction(sum(col)) for col in zip(*vectors, strict=True)]


@pytest.mark.parametrize("value", ["-5000.25", "0", "5000.25", "-0.01", "0.01"])
def test_adversarial_slots_at_max_addends_sum_exactly(
        enc: Encryptor, dec: Decryptor, value: str) -> None:
    addends = 16
    spec = Packing.for_key(PK1024, lower="-5000.25", upper="5000.25", digits=2,
                           addends=addends)
    count = spec.slots * 2 + 1
    vectors = [enc.encrypt_all(spec.pack([value] * count)) for _ in range(addends)]
    total = enc.add_vectors(vectors)
    totals = spec.unpack(dec.decrypt_many(total), count)
    assert totals == [Fraction(value) * addends] * count


# --------------------------------------------------------------------------- bad input


def test_key_below_2048_bits_is_refused_unless_allow_small() -> None:
    with pytest.raises(InvalidPublicKey, match=r"at least 2048 bits, got 1024.*allow_small"):
        Encryptor(PK1024)
    with pytest.raises(InvalidPublicKey, match="at least 2048 bits"):
        Decryptor(SK1024)
    assert MIN_KEY_BITS == 2048
    tiny = gmpy2.next_prime(2**60) * gmpy2.next_prime(2**61)
    with pytest.raises(InvalidPublicKey, match="at least 256 bits, got 122"):
        validate_public_key(phe.PaillierPublicKey(int(tiny)), allow_small=True)


def _prime(bits: int, seed: int) -> int:
    return int(gmpy2.next_prime(random.Random(seed).getrandbits(bits) | (1 << (bits - 1))))


@pytest.mark.parametrize("n, reason", [
    (P2048 * Q2048 + 1, "even"),
    (_prime(1024, 1) ** 2, "perfect square"),
    (_prime(683, 2) ** 3, "perfect power"),
    (65521 * _prime(2040, 3), "prime factor below 65536"),
    (3 * _prime(2047, 4), "prime factor below"),
    (_prime(2048, 5), "is prime"),
], ids=["even", "square", "cube", "factor-65521", "factor-3", "prime"])
def test_invalid_modulus_is_refused(n: int, reason: str) -> None:
    with pytest.raises(InvalidPublicKey, match=reason):
        Encryptor(phe.PaillierPublicKey(n))


def test_tampered_or_foreign_key_objects_are_refused() -> None:
    with pytest.raises(InvalidPublicKey, match="expected a phe.paillier.PaillierPublicKey"):
        Encryptor(PK2048.n)  # type: ignore[arg-type]
    bad = phe.PaillierPublicKey(PK2048.n)
    bad.g = 2
    with pytest.raises(InvalidPublicKey, match="g = n \\+ 1"):
        Encryptor(bad)
    with pytest.raises(InvalidPrivateKey, match="expected a phe.paillier.PaillierPrivateKey"):
        Decryptor(PK2048)  # type: ignore[arg-type]
    wrong = phe.PaillierPrivateKey(PK2048, P2048, Q2048)
    wrong.q = Q2048 + 2
    with pytest.raises(InvalidPrivateKey, match="do not multiply"):
        Decryptor(wrong)


@pytest.mark.parametrize("c, message", [
    (0, r"\[1, n\^2\).*got 0"),
    (-5, "got a negative value"),
    (P1024 * Q1024 * P1024 * Q1024, r"got a 204[78]-bit value"),
    (P1024 * 12345, "not coprime to n"),
    (Q1024, "not coprime to n"),
    (1.5, "must be an integer, got float"),
    (True, "got bool"),
    ("12", "got str"),
], ids=["zero", "negative", "n-squared", "multiple-of-p", "q", "float", "bool", "str"])
def test_bad_ciphertext_is_refused_everywhere(
        enc: Encryptor, dec: Decryptor, c: object, message: str) -> None:
    good = enc.encrypt(1)
    for op in (enc.check_ciphertext, enc.rerandomize, dec.decrypt,
               lambda x: enc.add(good, x), lambda x: enc.add_many([good, x]),
               lambda x: enc.scalar_mul(x, 2), lambda x: dec.decrypt_many([good, x]),
               lambda x: to_phe(PK1024, x)):
        with pytest.raises(InvalidCiphertext, match=message):
            op(c)


@pytest.mark.parametrize("m, message", [
    (-1, "got a negative value"),
    (P1024 * Q1024, r"\[0, n\).*got a 1024-bit value"),
    (2**5000, "got a 5001-bit value"),
    (0.5, "must be an integer, got float"),
    (None, "must be an integer, got NoneType"),
], ids=["negative", "n", "huge", "float", "None"])
def test_plaintext_out_of_range_is_refused_before_any_encryption(
        enc: Encryptor, m: object, message: str) -> None:
    with pytest.raises(PlaintextOutOfRange, match=message):
        enc.encrypt(m)
    with pytest.raises(PlaintextOutOfRange, match=message):
        enc.encrypt_all([1, 2, m])
    assert isinstance(PlaintextOutOfRange("x"), ValueError)


def test_scalar_out_of_range_is_refused(enc: Encryptor) -> None:
    c = enc.encrypt(3)
    with pytest.raises(PlaintextOutOfRange, match=r"scalar must be in \(-n, n\)"):
        enc.scalar_mul(c, PK1024.n)
    with pytest.raises(PlaintextOutOfRange, match="negative"):
        enc.scalar_mul(c, -PK1024.n)


def test_ciphertext_bytes_round_trip_and_refusals(enc: Encryptor) -> None:
    c = enc.encrypt(99)
    data = ciphertext_to_bytes(PK1024, c)
    assert len(data) == ciphertext_size(PK1024) == 256
    assert ciphertext_from_bytes(PK1024, data) == c
    with pytest.raises(InvalidCiphertext, match="must be 256 bytes for this key, got 255"):
        ciphertext_from_bytes(PK1024, data[1:])
    with pytest.raises(InvalidCiphertext, match=r"\[1, n\^2\)"):
        ciphertext_from_bytes(PK1024, b"\xff" * 256)
    with pytest.raises(InvalidCiphertext, match="not coprime"):
        ciphertext_from_bytes(PK1024, (P1024 * 3).to_bytes(256, "big"))


def test_every_refusal_is_a_value_error_under_one_root() -> None:
    for cls in (InvalidPublicKey, InvalidPrivateKey, InvalidCiphertext, PlaintextOutOfRange):
        assert issubclass(cls, ProtocolInputError) and issubclass(cls, ValueError)


def test_secret_holding_objects_refuse_pickling(enc: Encryptor, dec: Decryptor) -> None:
    for obj in (dec, enc, RandomnessPool(enc, 4)):
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(obj)
    assert str(P1024) not in repr(dec)


# --------------------------------------------------------------------------- pool, cores


def test_pool_hands_each_value_out_once_and_refills_in_background(dec: Decryptor) -> None:
    e = Encryptor(PK1024, allow_small=True, pool_capacity=8)
    pool = e.pool
    assert pool is not None and len(pool) == 0
    assert pool.fill() == 8 and len(pool) == 8 and pool.fill() == 0
    taken = [pool.take() for _ in range(8)]
    assert len(set(taken)) == 8 and len(pool) == 0 and pool.misses == 0
    assert all(SK1024.raw_decrypt(int(t)) == 0 for t in taken)  # each is an r^n
    pool.take()
    assert pool.misses == 1
    pool.start()
    try:
        cs = [e.encrypt(i) for i in range(40)]
    finally:
        pool.stop()
    assert dec.decrypt_many(cs) == list(range(40))
    pool.start()
    pool.stop()  # stops cleanly; the pool never goes above capacity
    assert len(pool) <= 8


def test_pool_extend_from_other_cores_respects_capacity(enc: Encryptor) -> None:
    pool = RandomnessPool(enc, 3)
    pool.extend(int(enc.fresh_obfuscator()) for _ in range(5))
    assert len(pool) == 3
    with pytest.raises(PlaintextOutOfRange, match="positive integer"):
        RandomnessPool(enc, 0)


def test_parallel_encryptor_encrypts_in_order_on_two_workers(dec: Decryptor) -> None:
    ms = list(range(0, 2000, 7)) + [PK1024.n - 1]
    with ParallelEncryptor(PK1024, workers=2, allow_small=True) as pe:
        cs = pe.encrypt_many(ms)
        assert dec.decrypt_many(cs) == ms
        assert len(set(cs)) == len(cs)
        with pytest.raises(PlaintextOutOfRange, match="plaintext must be in"):
            pe.encrypt_many([1, -1])
        obf = pe.obfuscators(50)
        assert len(obf) == 50 and len(set(obf)) == 50
        assert all(SK1024.raw_decrypt(o) == 0 for o in obf)
    assert dec.decrypt_many(encrypt_many(PK1024, [5, 6], workers=1, allow_small=True)) == [5, 6]


def test_parallel_encryptor_refuses_a_bad_key_in_the_callers_process() -> None:
    with pytest.raises(InvalidPublicKey, match="at least 2048 bits"):
        ParallelEncryptor(PK1024, workers=1)
    with pytest.raises(PlaintextOutOfRange, match="workers must be a positive integer"):
        ParallelEncryptor(PK1024, workers=0, allow_small=True)
