"""C2SP signed notes (Ed25519) and tlog-checkpoints.

Known answers from ``tests/vectors/signed_note_vectors.json``: the Ed25519 example of
c2sp.org/signed-note (C2SP/C2SP ``signed-note.md`` @ 5ba5ee83, section "Verifier keys" >
"Example") and the checkpoint text of c2sp.org/tlog-checkpoint, whose key is not published
(so it is checked for format only). Provenance is recorded in the file itself.
"""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.node.audit import (
    Checkpoint,
    MemoryTree,
    NoteSigner,
    NoteVerifier,
    consistency_proof,
    open_checkpoint,
    open_note,
    root_at,
    sign_checkpoint,
    verify_consistency,
    vkey_for,
)
from veil.node.errors import InvalidInput, VerificationError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "signed_note_vectors.json").read_text()
)
EXAMPLE = VECTORS["signed_note_ed25519"]
ORIGIN = "veil.example/node-a"


def _signer(name: str = ORIGIN, seed: int = 1) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


# --------------------------------------------------------------------------- the C2SP example


def test_c2sp_example_verifies() -> None:
    verifier = NoteVerifier.from_vkey(EXAMPLE["vkey"])
    assert verifier.name == "example.com/foo"
    assert verifier.key_id.hex() == EXAMPLE["expected_key_id_hex"]
    assert verifier.vkey == EXAMPLE["vkey"]
    assert vkey_for(verifier.name, verifier.public_key) == EXAMPLE["vkey"]
    assert open_note(EXAMPLE["note"], verifier) == EXAMPLE["expected_signed_text"]


def test_c2sp_example_changed_by_one_byte_fails() -> None:
    verifier = NoteVerifier.from_vkey(EXAMPLE["vkey"])
    note: str = EXAMPLE["note"]
    changed_text = note.replace("example message", "example massage")
    with pytest.raises(
        VerificationError, match=r"^signature by example.com/foo\+530d903a does not verify$"
    ):
        open_note(changed_text, verifier)
    # One byte of the signature itself (past the key ID, so the line is still this key's).
    sig_b64 = note.split("\n")[2].split(" ")[2]
    sig = bytearray(base64.b64decode(sig_b64))
    sig[10] ^= 1
    forged = note.replace(sig_b64, base64.b64encode(bytes(sig)).decode())
    with pytest.raises(VerificationError, match="does not verify"):
        open_note(forged, verifier)
    # One byte of the key ID: the line is now by an unknown key, so no signature is left.
    sig[10] ^= 1
    sig[0] ^= 1
    unknown = note.replace(sig_b64, base64.b64encode(bytes(sig)).decode())
    with pytest.raises(
        VerificationError,
        match=r"^no valid signature by example.com/foo\+530d903a: the note is signed by "
        r"example.com/foo\+520d903a$",
    ):
        open_note(unknown, verifier)


def test_c2sp_checkpoint_example_parses() -> None:
    example = VECTORS["checkpoint_body_example_format_only"]
    text = example["text"].split("\n\n")[0] + "\n"
    cp = Checkpoint.parse(text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert base64.b64encode(cp.root_hash).decode() == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert cp.extensions == ()
    assert cp.to_text() == text
    # Its key is not published: any other key finds no signature of its own in it.
    with pytest.raises(
        VerificationError, match="no valid signature by example.com/behind-the-sofa"
    ):
        open_checkpoint(example["text"], _signer("example.com/behind-the-sofa").verifier())


# --------------------------------------------------------------------------- notes


@settings(max_examples=50, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(codec="utf-8", min_codepoint=0x20), max_size=40),
        min_size=1,
        max_size=6,
    )
)
def test_sign_open_round_trip(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"  # may contain blank lines, and may end in one
    signer = _signer()
    note = signer.sign(text)
    assert open_note(note, NoteVerifier.from_vkey(signer.vkey)) == text


def test_signature_line_format() -> None:
    signer = _signer()
    note = signer.sign("hello\n")
    text, line = note.split("\n\n")
    assert text == "hello"
    assert line.startswith(f"\u2014 {ORIGIN} ") and line.endswith("\n")
    raw = base64.b64decode(line.removesuffix("\n").split(" ")[2])
    assert len(raw) == 4 + 64 and raw[:4] == signer.key_id
    assert signer.vkey.startswith(f"{ORIGIN}+{signer.key_id.hex()}+")


def test_unknown_keys_are_ignored_and_cosigned_notes_open() -> None:
    log, witness = _signer(seed=1), _signer("witness.example/w1", seed=2)
    note = log.sign("tree head\n")
    witness_line = witness.sign("tree head\n").split("\n\n")[1]
    cosigned = note + witness_line
    assert open_note(cosigned, log.verifier()) == "tree head\n"
    assert open_note(cosigned, witness.verifier()) == "tree head\n"
    # Same name, other key (so other key ID): ignored, and nothing of ours is left.
    impostor = _signer(ORIGIN, seed=3)
    with pytest.raises(
        VerificationError, match=rf"^no valid signature by {impostor.verifier().name}"
    ):
        open_note(note, impostor.verifier())


def test_a_bad_signature_by_the_trusted_key_rejects_the_note() -> None:
    log, other = _signer(seed=1), _signer(seed=4)
    good = log.sign("a\n")
    bad_line = good.split("\n\n")[1]
    raw = bytearray(base64.b64decode(bad_line.split(" ")[2]))
    raw[-1] ^= 1
    bad_line = bad_line.replace(
        bad_line.split(" ")[2].strip(), base64.b64encode(bytes(raw)).decode()
    )
    note = other.sign("a\n") + bad_line
    with pytest.raises(VerificationError, match="does not verify"):
        open_note(note, log.verifier())


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("no signatures\n", "expected a blank line"),
        ("text\n\n", "expected signature lines ending in a newline"),
        ("text\n\n- name AAAA\n", "expected it to start with an em dash"),
        ("text\n\n\u2014 name\n", "expected '— <name> <signature>'"),
        ("text\n\n\u2014 name not*base64\n", "is not valid base64"),
        ("text\n\n\u2014 name AAAAAA==\n", "must be longer than 4 bytes, got 4"),
        ("text\n\n\u2014 na+me AAAAAAA=\n", "contains '\\+'"),
        ("te\txt\n\n\u2014 name AAAAAAA=\n", "control character"),
        ("text\n\n" + "\u2014 name AAAAAAA=\n" * 2, "two signatures by name"),
        (
            "text\n\n" + "".join(f"\u2014 n{i} AAAAAAA=\n" for i in range(101)),
            "at most 100, got 101",
        ),
    ],
)
def test_malformed_notes(note: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_note(note, _signer().verifier())


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("example.com/foo+530d903a", "3 parts"),
        ("example.com/foo+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 hex digits"),
        (
            "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "expected 530d903a, got 530d903b",
        ),
        ("example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
        ("example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "type 02"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2", "base64"),
        ("+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "non-empty"),
    ],
)
def test_malformed_vkeys(vkey: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize("text", ["", "no newline", "bad\x00char\n"])
def test_sign_refuses_malformed_text(text: str) -> None:
    with pytest.raises(InvalidInput):
        _signer().sign(text)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\there", "nbsp\u00a0"])
def test_key_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidInput):
        _signer(name)


def test_signer_refuses_pickling() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(_signer())
    assert "Ed25519" not in repr(_signer()) and repr(_signer()).startswith("NoteSigner(")


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_sign_open_and_consistency() -> None:
    """The auditor's routine: two signed checkpoints of one log, and a consistency proof."""
    signer = _signer()
    entries = [b"entry %d" % i for i in range(11)]
    tree = MemoryTree.from_entries(entries)
    old = Checkpoint(ORIGIN, 6, root_at(6, tree.subtree))
    new = Checkpoint(ORIGIN, 11, tree.root(), ("extension line",))
    old_note, new_note = sign_checkpoint(old, signer), sign_checkpoint(new, signer)
    verifier = NoteVerifier.from_vkey(signer.vkey)
    assert open_checkpoint(old_note, verifier, origin=ORIGIN) == old
    got = open_checkpoint(new_note, verifier)
    assert got == new and got.extensions == ("extension line",)
    verify_consistency(
        old.size, got.size, old.root_hash, got.root_hash, consistency_proof(6, 11, tree.subtree)
    )
    with pytest.raises(
        VerificationError,
        match=rf"^checkpoint is for origin '{ORIGIN}', expected 'other.example/log'$",
    ):
        open_checkpoint(old_note, verifier, origin="other.example/log")
    with pytest.raises(VerificationError, match="does not verify"):
        open_checkpoint(old_note.replace("\n6\n", "\n7\n"), verifier)


def test_sign_checkpoint_needs_the_origin_as_key_name() -> None:
    cp = Checkpoint("other.example/log", 0, bytes(32))
    with pytest.raises(InvalidInput, match="differs from the signer's key name"):
        sign_checkpoint(cp, _signer())


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(codec="utf-8", min_codepoint=0x20), min_size=1, max_size=20),
        max_size=3,
    ),
)
def test_checkpoint_text_round_trip(size: int, root: bytes, extensions: list[str]) -> None:
    cp = Checkpoint(ORIGIN, size, root, tuple(extensions))
    assert Checkpoint.parse(cp.to_text()) == cp


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"o\n1\n{ROOT_B64}", "must end in a newline"),
        ("o\n1\n", "at least 3 lines, got 2"),
        (f"o\n01\n{ROOT_B64}\n", "without leading zeros, got '01'"),
        (f"o\n-1\n{ROOT_B64}\n", "decimal digits"),
        (f"o\n+1\n{ROOT_B64}\n", "decimal digits"),
        (f"o\n1 \n{ROOT_B64}\n", "decimal digits"),
        (f"o\n\u0661\n{ROOT_B64}\n", "decimal digits"),  # ARABIC-INDIC DIGIT ONE
        (f"o\n{2**64}\n{ROOT_B64}\n", r"0..2\*\*64-1"),
        ("o\n1\nAAAA\n", "must be 32 bytes, got 3"),
        (f"o\n1\n{ROOT_B64[:-1]}\n", "not valid base64"),
        (f"o\n1\n{ROOT_B64[:-2]}B=\n", "not canonical base64"),
        (f"\n1\n{ROOT_B64}\n", "line 1 is empty"),
        (f"o\n1\n{ROOT_B64}\n\nx\n", "line 4 is empty"),
        (f"o\n1\n{ROOT_B64}\n\n", "line 4 is empty"),
    ],
)
def test_checkpoint_parse_is_strict(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must be a non-empty string"),
        ({"origin": "a\nb"}, "control character"),
        ({"size": -1}, r"0..2\*\*64-1, got -1"),
        ({"size": True}, "must be an integer, got bool"),
        ({"root_hash": bytes(31)}, "must be 32 bytes, got 31"),
        ({"extensions": ("",)}, "extension line must be a non-empty string"),
        ({"extensions": ["x"]}, "must be a tuple"),
    ],
)
def test_checkpoint_fields_are_validated(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"origin": ORIGIN, "size": 1, "root_hash": bytes(32)} | kwargs
    with pytest.raises(InvalidInput, match=message):
        Checkpoint(**fields)
