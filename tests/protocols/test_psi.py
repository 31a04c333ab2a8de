"""ECDH-PSI steps (protocols.psi): the result is the set intersection on random and
adversarial sets, blinding commutes, libsodium agrees with cryptography on RFC 7748's
vectors, bad points from a peer are refused by offset, and each normalization is pinned."""

from __future__ import annotations

import random

import nacl.bindings
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.protocols import psi
from veil.protocols.errors import ProtocolInputError

P = 2**255 - 19
DOMAIN = psi.domain("job-test")


def ecdh_psi(a_items: list[str], b_items: list[str], shuffled: bool = False) -> set[str]:
    """The whole protocol in one process: which of A's items B also has, as A learns it."""
    a, b = psi.new_scalar(), psi.new_scalar()
    a_pts = psi.prepare(DOMAIN, a_items)
    b_pts = psi.prepare(DOMAIN, b_items)
    a_once = psi.blind(a, a_pts)                      # A -> B
    a_twice = psi.blind(b, a_once)                    # B -> A, in A's order
    b_twice = psi.blind(a, psi.blind(b, b_pts))       # B -> A (blinded by B) -> A blinds
    if shuffled:
        b_twice = psi.shuffle(b_twice, random.Random(7))
    mine = psi.unique(a_items)
    return {mine[i] for i in psi.match(b_twice, a_twice)}


def random_sets(rng: random.Random, n: int, overlap: int) -> tuple[list[str], list[str]]:
    common = [f"c{rng.getrandbits(64)}" for _ in range(overlap)]
    a = common + [f"a{rng.getrandbits(64)}" for _ in range(n - overlap)]
    b = common + [f"b{rng.getrandbits(64)}" for _ in range(n - overlap)]
    rng.shuffle(a)
    rng.shuffle(b)
    return a, b


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sets_give_the_set_intersection(seed: int) -> None:
    rng = random.Random(seed)
    a, b = random_sets(rng, 300, rng.randrange(0, 300))
    assert ecdh_psi(a, b) == set(a) & set(b)
    assert ecdh_psi(a, b, shuffled=True) == set(a) & set(b)


@pytest.mark.parametrize("case", ["empty_both", "empty_a", "empty_b", "all_duplicate",
                                  "identical", "disjoint", "duplicates_on_both"])
def test_adversarial_sets_give_the_set_intersection(case: str) -> None:
    a, b = {
        "empty_both": ([], []),
        "empty_a": ([], ["x", "y"]),
        "empty_b": (["x", "y"], []),
        "all_duplicate": (["same"] * 50, ["same"] * 20),
        "identical": ([f"k{i}" for i in range(40)], [f"k{i}" for i in range(40)]),
        "disjoint": ([f"a{i}" for i in range(40)], [f"b{i}" for i in range(40)]),
        "duplicates_on_both": (["x", "y", "x", "z"], ["y", "y", "w", "x"]),
    }[case]
    assert ecdh_psi(a, b) == set(a) & set(b)


def test_duplicate_keys_are_counted_once() -> None:
    assert len(psi.prepare(DOMAIN, ["x"] * 10 + ["y"])) == 2 * psi.POINT_BYTES
    assert psi.unique(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
    mine = psi.prepare(DOMAIN, ["x", "y"])
    assert psi.match(mine, mine + mine) == [0, 1, 2, 3]


@settings(max_examples=25, deadline=None)
@given(st.sets(st.text(max_size=8), max_size=30), st.sets(st.text(max_size=8), max_size=30))
def test_property_psi_equals_set_intersection(a: set[str], b: set[str]) -> None:
    assert ecdh_psi(sorted(a), sorted(b)) == a & b


def test_blinding_commutes() -> None:
    pts = psi.prepare(DOMAIN, [f"item{i}" for i in range(64)])
    for _ in range(5):
        a, b = psi.new_scalar(), psi.new_scalar()
        assert a != b
        assert psi.blind(a, psi.blind(b, pts)) == psi.blind(b, psi.blind(a, pts))
        assert psi.blind(a, pts) != pts


def test_the_domain_separates_jobs() -> None:
    assert psi.hash_to_point(psi.domain("j1"), "x") != psi.hash_to_point(psi.domain("j2"), "x")
    # self-delimiting: moving bytes between job id and item changes the point
    assert psi.hash_to_point(psi.domain("ab"), "c") != psi.hash_to_point(psi.domain("a"), "bc")
    assert psi.prepare(DOMAIN, ["x"]) == psi.hash_to_point(DOMAIN, "x")


def test_the_domain_is_self_delimiting_known_answer() -> None:
    # without the length, job "a" with key "\x00..." and job "a\x00..." could share points
    assert psi.domain("job-1") == b"veil-psi-v1\n\x00\x05job-1"
    assert psi.domain("é") == b"veil-psi-v1\n\x00\x02\xc3\xa9"


def test_hashed_points_are_canonical_and_pinned() -> None:
    import hashlib
    digest = hashlib.sha256(DOMAIN + (1).to_bytes(4, "big") + b"x").digest()
    want = (int.from_bytes(digest, "little") & ((1 << 255) - 1)).to_bytes(32, "little")
    assert psi.hash_to_point(DOMAIN, "x") == want
    for i in range(500):
        point = psi.hash_to_point(DOMAIN, str(i))
        assert point[31] & 0x80 == 0 and int.from_bytes(point, "little") < P


def test_domain_refuses_empty_and_huge_job_ids() -> None:
    with pytest.raises(psi.InvalidItem, match="empty"):
        psi.domain("")
    with pytest.raises(psi.InvalidItem, match="at most 256"):
        psi.domain("j" * 257)


def test_hash_refuses_a_huge_key() -> None:
    with pytest.raises(psi.InvalidItem, match="4097 bytes"):
        psi.hash_to_point(DOMAIN, "k" * 4097)
    with pytest.raises(psi.InvalidItem, match="4097 bytes"):
        psi.prepare(DOMAIN, ["ok", "k" * 4097])


# RFC 7748 section 5.2 (scalar, u, product) and 6.1 (Alice's key times Bob's public key);
# the second u has bit 255 set, which X25519 ignores
RFC7748 = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
    ("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
     "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
     "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
]


@pytest.mark.parametrize("scalar,u,product", RFC7748)
def test_pynacl_equals_cryptography_on_rfc7748_vectors(scalar: str, u: str,
                                                       product: str) -> None:
    k, point = bytes.fromhex(scalar), bytes.fromhex(u)
    ours = nacl.bindings.crypto_scalarmult(k, point)
    theirs = x25519.X25519PrivateKey.from_private_bytes(k).exchange(
        x25519.X25519PublicKey.from_public_bytes(point))
    assert ours == theirs == bytes.fromhex(product)
    if point[31] & 0x80 == 0:
        assert psi.blind(k, point) == bytes.fromhex(product)


def test_blind_equals_cryptography_on_hashed_points() -> None:
    scalar = psi.new_scalar()
    key = x25519.X25519PrivateKey.from_private_bytes(scalar)
    pts = psi.points(psi.prepare(DOMAIN, [f"v{i}" for i in range(50)]))
    want = b"".join(key.exchange(x25519.X25519PublicKey.from_public_bytes(p)) for p in pts)
    assert psi.blind(scalar, b"".join(pts)) == want


def le(u: int) -> bytes:
    return u.to_bytes(32, "little")


# libsodium's blacklist of small-order u-coordinates (crypto_scalarmult/curve25519): 0, 1,
# the two points of order 8, and p - 1 (order 2); p and p + 1 alias 0 and 1
ORDER8_A = 325606250916557431795983626356110631294008115727848805560023387167927233504
ORDER8_B = 39382357235489614581723060781553021112529911719440698176882885853963445705823
SMALL_ORDER = {"zero": le(0), "one": le(1), "order8_a": le(ORDER8_A),
               "order8_b": le(ORDER8_B), "p_minus_1": le(P - 1)}


@pytest.mark.parametrize("name", sorted(SMALL_ORDER))
def test_blind_refuses_small_order_points_naming_the_offset(name: str) -> None:
    good = psi.prepare(DOMAIN, ["a", "b", "c"])
    bad = good[:64] + SMALL_ORDER[name] + good[64:]
    with pytest.raises(psi.InvalidPoint, match=r"point 2 \(byte offset 64\).*small order") as e:
        psi.blind(psi.new_scalar(), bad)
    assert e.value.index == 2
    assert isinstance(e.value, ProtocolInputError)


@pytest.mark.parametrize("u", [P, P + 1, 2**255 - 1])
def test_blind_refuses_non_canonical_encodings(u: int) -> None:
    with pytest.raises(psi.InvalidPoint, match=r"point 0 .*not a canonical"):
        psi.blind(psi.new_scalar(), le(u))


def test_blind_refuses_a_point_with_bit_255_set() -> None:
    # the same point as its canonical form to X25519: accepting it would let a peer send one
    # item twice under two encodings
    point = bytearray(psi.hash_to_point(DOMAIN, "x"))
    point[31] |= 0x80
    with pytest.raises(psi.InvalidPoint, match="not a canonical"):
        psi.blind(psi.new_scalar(), bytes(point))


@pytest.mark.parametrize("length", [1, 31, 33, 63, 100])
def test_wrong_lengths_are_refused(length: int) -> None:
    data = b"\x05" * length
    with pytest.raises(psi.InvalidPoint, match=f"{length} bytes; expected a multiple of 32"):
        psi.blind(psi.new_scalar(), data)
    with pytest.raises(psi.InvalidPoint, match="multiple of 32"):
        psi.match(psi.prepare(DOMAIN, ["x"]), data)
    with pytest.raises(psi.InvalidPoint, match="multiple of 32"):
        psi.match(data, psi.prepare(DOMAIN, ["x"]))
    with pytest.raises(psi.InvalidPoint, match="multiple of 32"):
        psi.shuffle(data)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_a_scalar_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(psi.InvalidScalar, match=f"{length} bytes; expected 32"):
        psi.blind(b"\x01" * length, psi.prepare(DOMAIN, ["x"]))


def test_new_scalars_are_fresh_and_clamped() -> None:
    scalars = {psi.new_scalar() for _ in range(100)}
    assert len(scalars) == 100
    for s in scalars:
        assert len(s) == 32 and s[0] & 7 == 0 and s[31] & 0x80 == 0 and s[31] & 0x40


def test_shuffle_permutes_points_and_keeps_them() -> None:
    pts = psi.prepare(DOMAIN, [str(i) for i in range(100)])
    out = psi.shuffle(pts, random.Random(1))
    assert out != pts
    assert sorted(psi.points(out)) == sorted(psi.points(pts))
    assert psi.shuffle(b"") == b""


def test_blind_pool_blinds_in_order_like_blind() -> None:
    scalar = psi.new_scalar()
    batches = [psi.prepare(DOMAIN, [f"{j}:{i}" for i in range(j * 7)]) for j in range(12)]
    with psi.BlindPool(workers=2, depth=3) as pool:
        assert len(pool.worker_pids()) == 2  # started at set-up, not on the first batch
        assert list(pool.blind_batches(scalar, iter(batches))) == [
            psi.blind(scalar, b) for b in batches]
        # the pool is set up once and serves the next run too
        assert list(pool.blind_batches(scalar, batches[:2])) == [
            psi.blind(scalar, b) for b in batches[:2]]


def test_blind_pool_names_the_batch_of_a_small_order_point() -> None:
    good = psi.prepare(DOMAIN, ["a", "b"])
    batches = [good, good, good + SMALL_ORDER["one"], good]
    with psi.BlindPool(workers=2) as pool:
        got = pool.blind_batches(psi.new_scalar(), batches)
        with pytest.raises(psi.InvalidPoint, match=r"batch 2: point 2 \(byte offset 64\)") as e:
            list(got)
        assert (e.value.batch, e.value.index) == (2, 2)
        with pytest.raises(psi.InvalidPoint, match="batch 0: a batch of points is 33 bytes"):
            list(pool.blind_batches(psi.new_scalar(), [b"\x05" * 33]))
        with pytest.raises(psi.InvalidScalar):
            list(pool.blind_batches(b"short", [good]))


# --- normalization -------------------------------------------------------------------------

NBSP, IDEO, EMSP, TAB = "\u00a0", "\u3000", "\u2003", "\t"

NORMALIZE = [
    # exact: NFKC only
    ("exact", "Alice", "Alice"),
    ("exact", " Alice ", " Alice "),
    ("exact", "１２３", "123"),                       # full-width digits
    ("exact", "ﬁle", "file"),                          # ligature
    ("exact", "e\u0301", "é"),                         # composed
    ("exact", f"a{NBSP}b", "a b"),
    ("exact", "", None),
    # trimmed: + strip Unicode whitespace at both ends
    ("trimmed", "  Alice\n", "Alice"),
    ("trimmed", f"{NBSP}Alice{IDEO}", "Alice"),
    ("trimmed", f"{EMSP}{TAB}Alice Smith{TAB}", "Alice Smith"),
    ("trimmed", "\u2028x\u2029", "x"),
    ("trimmed", "Ａｌｉｃｅ", "Alice"),                # full-width letters
    ("trimmed", f" {IDEO}{NBSP}", None),
    # casefold: trimmed + full case folding
    ("casefold", " ALICE ", "alice"),
    ("casefold", "Straße", "strasse"),
    ("casefold", "STRASSE", "strasse"),
    ("casefold", f"{IDEO}ΣΊΣΥΦΟΣ", "σίσυφοσ"),
    ("casefold", "Ａｌｉｃｅ", "alice"),
    ("casefold", "E\u0301", "é"),
    ("casefold", "\t", None),
    # digits: only ASCII digits after NFKC
    ("digits", "+1 (555) 010-9999", "15550109999"),
    ("digits", "１２３－４５６", "123456"),
    ("digits", f"555{NBSP}0100{IDEO}", "5550100"),
    ("digits", "٠١٢٣", None),                          # Arabic-Indic digits are not kept
    ("digits", "no digits", None),
    # e164: + (or 00) then 8..15 digits, the first not 0
    ("e164", "+1 (555) 010-9999", "+15550109999"),
    ("e164", "0044 20 7946 0958", "+442079460958"),
    ("e164", "+44 (0)20 7946 0958", "+442079460958"),
    ("e164", "＋８６ １３８ ００１３ ８０００", "+8613800138000"),  # full-width
    ("e164", f"{NBSP}+49.30.123456{IDEO}", "+4930123456"),
    ("e164", "+33/1/23/45/67/89", "+33123456789"),
    ("e164", "555 010 9999", None),                    # no country code
    ("e164", "+1234567", None),                        # 7 digits
    ("e164", "+1234567890123456", None),               # 16 digits
    ("e164", "+0123456789", None),                     # country code cannot start with 0
    ("e164", "+1 555 CALL NOW", None),
    ("e164", "+1 555 010 9999 ext 2", None),
    ("e164", "++15550109999", None),
    ("e164", "", None),
]


@pytest.mark.parametrize("mode,value,want", NORMALIZE)
def test_normalization_table(mode: psi.Mode, value: str, want: str | None) -> None:
    assert psi.normalize(value, mode) == want
    if want is not None:  # idempotent: both sides may normalize twice
        assert psi.normalize(want, mode) == want


def test_every_mode_is_in_the_table() -> None:
    assert {m for m, _, _ in NORMALIZE} == set(psi.MODES)


def test_normalize_all_counts_the_skipped_values() -> None:
    out = psi.normalize_all(["+15550109999", "junk", "", "0015550109999"], "e164")
    assert out == psi.Normalized(["+15550109999", "+15550109999"], 2)


def test_an_unknown_mode_is_refused_naming_the_modes() -> None:
    with pytest.raises(psi.UnknownMode, match="'lower'; expected one of exact, trimmed"):
        psi.normalize("x", "lower")  # type: ignore[arg-type]
    with pytest.raises(psi.UnknownMode):
        psi.normalize_all([], "lower")  # type: ignore[arg-type]


def test_normalized_variants_meet_in_the_intersection() -> None:
    a = psi.normalize_all(["+1 (555) 010-9999", "００４４ ２０ ７９４６ ０９５８"], "e164").items
    b = psi.normalize_all(["001-555-010-9999", "+49 30 123456"], "e164").items
    assert ecdh_psi(a, b) == {"+15550109999"}
