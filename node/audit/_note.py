"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys (signature type 0x01).

A note is a text ending in a newline, a blank line, and one or more signature lines::

    <text>\\n
    \\n
    — <key name> base64(key ID (4 bytes) || Ed25519 signature (64 bytes))\\n

The key ID is ``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``; a verifier key is
written ``<name>+<key ID in hex>+base64(0x01 || public key)``.

``open_note`` follows the spec's rules: signature lines from unknown keys (a different name
or a different key ID) are ignored; a signature line from the known key must verify, or the
whole note is rejected; at least one must be present. Base64 must be canonical (standard
alphabet, padded). Malformed notes and keys raise :class:`~node.errors.InvalidInput`,
signatures that do not verify :class:`~node.errors.VerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.node.errors import InvalidInput, VerificationError

__all__ = ["NoteSigner", "NoteVerifier", "open_note", "vkey_for"]

_ALG_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash, space
_KEY_ID_SIZE = 4
_SIG_SIZE = 64
#: the spec requires accepting at least 16; Go's golang.org/x/mod/sumdb/note stops at 100
MAX_SIGNATURES = 100


def _b64decode(value: str, what: str) -> bytes:
    """Decode canonical standard base64 (padded, no stray bits), else ``InvalidInput``."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidInput(f"{what} is not valid base64: {value!r}") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise InvalidInput(f"{what} is not canonical base64: {value!r}")
    return raw


def _check_name(name: str) -> None:
    """Key names are non-empty, with no Unicode space, no plus and no control character."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("key name must be a non-empty string")
    bad = next((c for c in name if c.isspace() or c == "+" or c < " "), None)
    if bad is not None:
        raise InvalidInput(
            f"key name {name!r} contains {bad!r}: expected no spaces, plus signs or "
            "control characters"
        )


def _check_chars(what: str, text: str) -> None:
    """Notes are UTF-8 with no ASCII control character other than newline."""
    bad = next((c for c in text if c < " " and c != "\n"), None)
    if bad is not None:
        raise InvalidInput(f"{what} contains control character {bad!r}; only newline is allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid UTF-8 (contains a lone surrogate)") from None


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ALG_ED25519 + public).digest()[:4]


def vkey_for(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``name+<key ID hex>+base64(0x01 || public key)``."""
    _check_name(name)
    public = _raw_public(public_key)
    key_data = base64.b64encode(_ALG_ED25519 + public).decode("ascii")
    return f"{name}+{_key_id(name, public).hex()}+{key_data}"


class NoteVerifier:
    """One trusted Ed25519 key: its name, key ID and public key."""

    __slots__ = ("_key_id", "_name", "_public_key")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_name(name)
        self._name = name
        self._public_key = public_key
        self._key_id = _key_id(name, _raw_public(public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+<8 hex>+base64(0x01 || key)``; the key ID must match name and key."""
        if not isinstance(vkey, str):
            raise InvalidInput(f"verifier key must be a string, got {type(vkey).__name__}")
        parts = vkey.split("+")
        if len(parts) != 3:
            raise InvalidInput(
                f"verifier key must be name+keyid+key (3 parts), got {len(parts)} parts: {vkey!r}"
            )
        name, key_id_hex, key_b64 = parts
        _check_name(name)
        if len(key_id_hex) != 8 or any(c not in "0123456789abcdefABCDEF" for c in key_id_hex):
            raise InvalidInput(f"verifier key ID must be 8 hex digits, got {key_id_hex!r}")
        key_data = _b64decode(key_b64, "verifier key data")
        if key_data[:1] != _ALG_ED25519 or len(key_data) != 1 + 32:
            raise InvalidInput(
                "verifier key data must be 0x01 followed by a 32-byte Ed25519 key, got "
                f"type {key_data[:1].hex() or 'none'} and {max(len(key_data) - 1, 0)} key bytes"
            )
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(key_data[1:]))
        if verifier.key_id.hex() != key_id_hex.lower():
            raise InvalidInput(
                f"verifier key ID does not match its name and key: expected "
                f"{verifier.key_id.hex()}, got {key_id_hex}"
            )
        return verifier

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public_key

    @property
    def vkey(self) -> str:
        return vkey_for(self._name, self._public_key)

    def verify(self, text: str, signature: bytes) -> bool:
        """True if ``signature`` (64 bytes, without key ID) is this key's over ``text``."""
        try:
            self._public_key.verify(signature, text.encode("utf-8"))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self._name}+{self._key_id.hex()})"


class NoteSigner:
    """An Ed25519 private key with the name it signs notes under.

    Refuses pickling: exporting the private key needs an explicit step with ``cryptography``.
    """

    __slots__ = ("_key_id", "_name", "_private_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise InvalidInput(
                f"note signer needs an Ed25519 private key, got {type(private_key).__name__}"
            )
        self._name = name
        self._private_key = private_key
        self._key_id = _key_id(name, _raw_public(private_key.public_key()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def vkey(self) -> str:
        return vkey_for(self._name, self._private_key.public_key())

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self._name, self._private_key.public_key())

    def sign(self, text: str) -> str:
        """Return the note: ``text``, a blank line, and this key's signature line.

        ``text`` must be non-empty, end in a newline and contain no control character
        other than newline (it may contain blank lines).
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise InvalidInput("note text must be a string ending in a newline")
        _check_chars("note text", text)
        signature = self._private_key.sign(text.encode("utf-8"))
        sig_b64 = base64.b64encode(self._key_id + signature).decode("ascii")
        return f"{text}\n{_SIG_PREFIX}{self._name} {sig_b64}\n"

    def __reduce__(self) -> NoReturn:
        raise TypeError("NoteSigner holds a private key and cannot be pickled")

    def __repr__(self) -> str:
        return f"NoteSigner({self._name}+{self._key_id.hex()})"


def open_note(note: str, verifier: NoteVerifier) -> str:
    """Return the text of ``note`` if ``verifier``'s key signed it.

    Every signature line is parsed (a malformed one makes the note malformed); lines by
    other keys are then ignored. ``VerificationError`` if a line by this key does not
    verify or if there is no line by this key.
    """
    if not isinstance(note, str):
        raise InvalidInput(f"note must be a string, got {type(note).__name__}")
    _check_chars("note", note)
    split = note.rfind("\n\n")
    if split < 0:
        raise InvalidInput("malformed note: expected a blank line before the signature lines")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise InvalidInput("malformed note: expected signature lines ending in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidInput(
            f"note has too many signatures: at most {MAX_SIGNATURES}, got {len(lines)}"
        )

    signers: list[tuple[str, bytes, bytes]] = []
    for n, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise InvalidInput(
                f"malformed signature line {n}: expected it to start with an em dash and a "
                f"space, got {line[:20]!r}"
            )
        name, space, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not space:
            raise InvalidInput(f"malformed signature line {n}: expected '— <name> <signature>'")
        _check_name(name)
        sig = _b64decode(sig_b64, f"signature on line {n}")
        if len(sig) <= _KEY_ID_SIZE:
            raise InvalidInput(
                f"signature on line {n} must be longer than {_KEY_ID_SIZE} bytes, got {len(sig)}"
            )
        key_id = sig[:_KEY_ID_SIZE]
        if any(name == s[0] and key_id == s[1] for s in signers):
            raise InvalidInput(f"malformed note: two signatures by {name}+{key_id.hex()}")
        signers.append((name, key_id, sig[_KEY_ID_SIZE:]))

    wanted = f"{verifier.name}+{verifier.key_id.hex()}"
    for name, key_id, sig in signers:
        if name == verifier.name and key_id == verifier.key_id:
            if len(sig) != _SIG_SIZE or not verifier.verify(text, sig):
                raise VerificationError(f"signature by {wanted} does not verify")
            return text
    found = ", ".join(f"{name}+{key_id.hex()}" for name, key_id, _ in signers)
    raise VerificationError(f"no valid signature by {wanted}: the note is signed by {found}")
