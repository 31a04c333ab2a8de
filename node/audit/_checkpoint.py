"""C2SP transparency-log checkpoints (c2sp.org/tlog-checkpoint): a signed tree head.

The note text is at least three non-empty lines::

    <origin>
    <tree size in ASCII decimal, no leading zeros>
    <base64 of the 32-byte RFC 6962 root hash>
    [<extension line>...]

``Checkpoint.parse`` is strict: it refuses anything ``to_text`` would not produce, so a
checkpoint has exactly one text and the signature covers exactly what was parsed.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from veil.node.audit._merkle import HASH_SIZE
from veil.node.audit._note import NoteSigner, NoteVerifier, _b64decode, open_note
from veil.node.errors import InvalidInput, VerificationError

__all__ = ["Checkpoint", "open_checkpoint", "sign_checkpoint"]

_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_MAX_SIZE = 2**64 - 1  # what every other implementation (uint64) can read


def _check_line(what: str, line: str) -> None:
    if not isinstance(line, str) or not line:
        raise InvalidInput(f"checkpoint {what} must be a non-empty string")
    bad = next((c for c in line if c < " "), None)
    if bad is not None:
        raise InvalidInput(f"checkpoint {what} {line!r} contains control character {bad!r}")


@dataclass(frozen=True)
class Checkpoint:
    """A log's claim: the tree of ``origin`` had ``size`` leaves and root ``root_hash``."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line("origin", self.origin)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise InvalidInput(
                f"checkpoint size must be an integer, got {type(self.size).__name__}"
            )
        if not 0 <= self.size <= _MAX_SIZE:
            raise InvalidInput(f"checkpoint size must be in 0..2**64-1, got {self.size}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            got = (
                len(self.root_hash)
                if isinstance(self.root_hash, bytes)
                else type(self.root_hash).__name__
            )
            raise InvalidInput(f"checkpoint root hash must be {HASH_SIZE} bytes, got {got}")
        if not isinstance(self.extensions, tuple):
            raise InvalidInput("checkpoint extensions must be a tuple of strings")
        for line in self.extensions:
            _check_line("extension line", line)

    def to_text(self) -> str:
        """The note text: origin, size, base64 root, extension lines, each ending in newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text (not the signed note: see ``open_checkpoint``)."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise InvalidInput("checkpoint text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InvalidInput(f"checkpoint must have at least 3 lines, got {len(lines)}")
        for n, line in enumerate(lines, 1):
            if not line:
                raise InvalidInput(f"checkpoint line {n} is empty; every line must be non-empty")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE.fullmatch(size_text):
            raise InvalidInput(
                f"checkpoint size must be decimal digits without leading zeros, got {size_text!r}"
            )
        root = _b64decode(root_text, "checkpoint root hash")
        if len(root) != HASH_SIZE:
            raise InvalidInput(f"checkpoint root hash must be {HASH_SIZE} bytes, got {len(root)}")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The signed note of ``checkpoint``; the signer's key name must be its origin."""
    if signer.name != checkpoint.origin:
        raise InvalidInput(
            f"checkpoint origin {checkpoint.origin!r} differs from the signer's key name "
            f"{signer.name!r}; a log signs under its origin"
        )
    return signer.sign(checkpoint.to_text())


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Verify ``note``'s signature by ``verifier``, then parse the checkpoint it carries.

    If ``origin`` is given the checkpoint must be for that log (``VerificationError``
    otherwise): a valid signature on another log's checkpoint proves nothing about this one.
    """
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            f"checkpoint is for origin {checkpoint.origin!r}, expected {origin!r}"
        )
    return checkpoint
