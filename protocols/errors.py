"""The exceptions ``veil.protocols`` raises on purpose: one root, a subclass per kind of input.

Every one is a ``ValueError`` caused by input a caller controls (a key, a ciphertext, a
plaintext, a value to pack), so the node maps the root to ``INVALID_ARGUMENT`` in one place.
Messages say what was expected and what was found, and never quote a secret (a private
factor, a plaintext of someone else); a value that is too large is described by its size.
Internal bugs are not ``ProtocolInputError``: they surface as ``AssertionError`` or
``RuntimeError``.
"""

from __future__ import annotations


class ProtocolInputError(ValueError):
    """Root of the errors about input to a protocol step."""


class InvalidPublicKey(ProtocolInputError):
    """A Paillier public key that is too small or whose modulus cannot be a product of two
    large primes (even, a perfect power, prime, or with a small factor)."""


class InvalidPrivateKey(ProtocolInputError):
    """A Paillier private key whose factors do not match its public key."""


class InvalidCiphertext(ProtocolInputError):
    """A ciphertext outside ``[1, n^2)``, not coprime to ``n``, or of the wrong encoded size."""


class PlaintextOutOfRange(ProtocolInputError):
    """A plaintext (or scalar, or randomness exponent) that is not an integer in its range."""


class PackingError(ProtocolInputError):
    """A packing spec that cannot hold its declared bounds, or plaintexts that do not unpack."""


class SlotOutOfBounds(PackingError):
    """A value outside the declared bounds or precision; ``slot`` is its index in the input."""

    def __init__(self, slot: int, message: str) -> None:
        super().__init__(f"value at slot {slot}: {message}")
        self.slot = slot


class SignatureInvalid(ProtocolInputError):
    """An Ed25519 signature that does not verify under its domain with the given key; the
    message names what was being verified (a job, a decision, a receipt, a mask key)."""
