"""The auditor's library: check Veil's log without trusting the node that keeps it.

Pure functions over bytes and text; no server, no database. An auditor's routine:

1. ``open_checkpoint(note, NoteVerifier.from_vkey(vkey), origin=...)`` checks the node's
   Ed25519 signature on a C2SP checkpoint (c2sp.org/signed-note, c2sp.org/tlog-checkpoint)
   and that it is for the expected log; it returns the ``Checkpoint`` (origin, size, root).
2. ``verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)`` checks
   that the newer checkpoint's tree extends the older one, i.e. nothing was rewritten
   (RFC 9162 section 2.1.4.2).
3. ``verify_inclusion(leaf_hash(entry), index, cp.size, proof, cp.root_hash)`` checks that
   a log entry (e.g. from a receipt) is at ``index`` in that tree (RFC 9162 section 2.1.3.2).
4. ``root_hash(entries)`` recomputes the root from all entries, streaming; compare it to a
   checkpoint's root to verify the whole log at once.

Rules worth knowing:

- Every hash (leaf hash, proof element, root) must be exactly 32 bytes.
- Consistency from size 0: the empty tree (root ``EMPTY_ROOT`` = SHA-256 of nothing) is a
  prefix of every tree, so ``old_size == 0`` needs an empty proof and ``old_root ==
  EMPTY_ROOT``, and is then consistent with any new tree. Equal sizes need an empty proof
  and equal roots. ``old_size > new_size`` is refused as invalid input: compare checkpoint
  sizes first; a log whose size went down has been rolled back.
- Signature lines by other keys are ignored; a bad signature by the trusted key rejects
  the note.

Errors: ``InvalidInput`` for malformed arguments (index past the tree size, hash not 32
bytes, malformed note or checkpoint); ``VerificationError`` when something well formed
does not verify (wrong proof length, root mismatch, bad or missing signature). Both are
``node.errors.VeilError``.

For the node (log side): ``Frontier`` appends leaves and reports the perfect subtrees each
completes; ``inclusion_proof``, ``consistency_proof`` and ``root_at`` build proofs from a
store of those subtrees (``MemoryTree`` is the in-memory reference store), and
``sign_checkpoint``/``NoteSigner`` sign tree heads.
"""

from veil.node.audit._checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from veil.node.audit._merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_leaf_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from veil.node.audit._note import NoteSigner, NoteVerifier, open_note, vkey_for

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "Frontier",
    "MemoryTree",
    "NoteSigner",
    "NoteVerifier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "root_at",
    "root_from_leaf_hashes",
    "root_hash",
    "sign_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "vkey_for",
]
