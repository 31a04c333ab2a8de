"""RFC 6962 / RFC 9162 Merkle tree: hashing, proofs from stored subtrees, verifiers.

The tree over entries ``D[0:n]`` is the one of RFC 9162 section 2.1.1::

    MTH({})      = SHA-256()                        (EMPTY_ROOT)
    MTH({d0})    = SHA-256(0x00 || d0)              (leaf_hash)
    MTH(D[0:n])  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k = largest power of 2 < n

A *perfect subtree* ``(level, index)`` is ``MTH`` of the ``2**level`` leaves starting at
leaf ``index * 2**level``. The node stores the hash of every perfect subtree once it is
complete (``Frontier.append`` says which ones an appended leaf completes) and never stores
anything else; every other hash the proofs need lies on the tree's right edge and is
recomputed here from at most ``log2(n)`` perfect ones. A proof therefore costs ``O(log n)``
point lookups (at most ``2 * n.bit_length() + 1``; 26 at a million leaves), each of a
subtree entirely inside the tree.

Verifiers follow RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency), and in
addition refuse any hash that is not exactly 32 bytes: without that rule a one-entry tree
whose leaf hash and root are both the empty string would verify (transparency-dev/merkle
probe ``testdata/inclusion/single-entry/empty-root-and-leaf.json``).

Consistency from size 0 (implementations disagree; this is Veil's rule): the empty tree is
a prefix of every tree, so ``old_size == 0`` is consistent with any ``new_size`` provided
the proof is empty and ``old_root`` is ``EMPTY_ROOT`` (and, if ``new_size == 0`` too,
``new_root`` is ``EMPTY_ROOT``). ``old_size == new_size`` needs an empty proof and equal
roots. ``old_size > new_size`` is refused as invalid input.

Errors: :class:`~node.errors.InvalidInput` for malformed arguments (negative or
out-of-range sizes and indexes, hashes that are not 32 bytes); :class:`~node.errors.VerificationError`
when a well-formed proof does not verify (wrong length, wrong root).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from hashlib import sha256 as _sha256

from veil.node.errors import InvalidInput, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MemoryTree",
    "Subtree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_at",
    "root_from_leaf_hashes",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = _sha256(b"").digest()

#: ``subtree(level, index)`` returns the stored hash of a perfect subtree.
Subtree = Callable[[int, int], bytes]


# --------------------------------------------------------------------------- hashing


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry as a leaf."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def _fold_right(hashes: list[bytes]) -> bytes:
    """Hash the perfect subtrees of a right edge, largest first, into one node (consumes the list)."""
    h = hashes.pop()
    while hashes:
        h = _sha256(b"\x01" + hashes.pop() + h).digest()
    return h


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """Root of the tree whose leaf hashes are ``hashes``, in one streaming pass.

    Memory is one hash per set bit of the running size (a stack of perfect subtrees).
    Every leaf hash must be 32 bytes (``InvalidInput`` names the first that is not).
    """
    stack: list[bytes] = []
    for n, h in enumerate(hashes, 1):
        if len(h) != HASH_SIZE:
            raise InvalidInput(f"leaf hash {n - 1} must be {HASH_SIZE} bytes, got {len(h)}")
        k = n
        while not k & 1:  # each trailing zero of the new size completes one more subtree
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            k >>= 1
        stack.append(h)
    return _fold_right(stack) if stack else EMPTY_ROOT


def root_hash(entries: Iterable[bytes]) -> bytes:
    """Root of the tree over the raw ``entries`` (each is leaf-hashed first), streaming."""
    stack: list[bytes] = []
    for n, entry in enumerate(entries, 1):
        h = _sha256(b"\x00" + entry).digest()
        k = n
        while not k & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            k >>= 1
        stack.append(h)
    return _fold_right(stack) if stack else EMPTY_ROOT


# --------------------------------------------------------------------------- argument checks


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise InvalidInput(f"{name} must be >= 0, got {value}")


def _check_index(index: int, tree_size: int) -> None:
    _check_size("tree size", tree_size)
    _check_size("index", index)
    if index >= tree_size:
        raise InvalidInput(f"index {index} is past the tree size {tree_size}")


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidInput(f"{name} must be {HASH_SIZE} bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise InvalidInput(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_proof(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        _check_hash(f"proof[{i}]", h)


def _largest_power_of_2_below(n: int) -> int:
    """For n >= 2: the k of RFC 9162 (largest power of two smaller than n)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------- proofs from storage


def _range_hash(begin: int, end: int, subtree: Subtree) -> bytes:
    """``MTH(D[begin:end])`` for a node of the tree, from perfect subtrees.

    ``begin`` is a multiple of the largest power of two <= ``end - begin`` (true of every
    node of an RFC 6962 tree), so the binary decomposition of ``end - begin`` gives aligned
    perfect subtrees, largest first; their right fold is the node's hash.
    """
    pieces = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        pieces.append(subtree(level, begin >> level))
        begin += 1 << level
    return _fold_right(pieces)


def root_at(tree_size: int, subtree: Subtree) -> bytes:
    """Root of the first ``tree_size`` leaves, from at most ``log2(tree_size) + 1`` lookups."""
    _check_size("tree size", tree_size)
    return _range_hash(0, tree_size, subtree) if tree_size else EMPTY_ROOT


def inclusion_proof(index: int, tree_size: int, subtree: Subtree) -> list[bytes]:
    """Audit path ``PATH(index, D[0:tree_size])`` of RFC 9162 section 2.1.3.1, leaf to root."""
    _check_index(index, tree_size)
    path: list[bytes] = []  # root to leaf; reversed at the end
    begin, end = 0, tree_size
    while end - begin > 1:
        k = _largest_power_of_2_below(end - begin)
        mid = begin + k
        if index < mid:
            path.append(_range_hash(mid, end, subtree))  # may lie on the right edge
            end = mid
        else:
            path.append(subtree(k.bit_length() - 1, begin // k))
            begin = mid
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """``PROOF(old_size, D[0:new_size])`` of RFC 9162 section 2.1.4.1, bottom up.

    Empty when ``old_size`` is 0 or equal to ``new_size`` (see the module's size-0 rule).
    """
    _check_size("old size", old_size)
    _check_size("new size", new_size)
    if old_size > new_size:
        raise InvalidInput(f"old size {old_size} is past the new size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    path: list[bytes] = []  # root to leaves; reversed at the end
    begin, end, whole_old_tree = 0, new_size, True
    while True:
        n, m = end - begin, old_size - begin
        if m == n:  # D[begin:end] is a perfect subtree the old tree ends with
            if not whole_old_tree:
                path.append(_range_hash(begin, end, subtree))
            break
        k = _largest_power_of_2_below(n)
        if m <= k:
            path.append(_range_hash(begin + k, end, subtree))
            end = begin + k
        else:
            path.append(subtree(k.bit_length() - 1, begin // k))
            begin += k
            whole_old_tree = False
    path.reverse()
    return path


# --------------------------------------------------------------------------- appending


class Frontier:
    """The right edge of a tree: one perfect-subtree hash per set bit of its size.

    This is all a log needs in memory to append: ``append`` returns the perfect subtrees
    each new leaf completes (for storage) and ``root`` folds the edge into the root.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        """``hashes`` are the perfect subtrees of the decomposition of ``size``, largest first."""
        _check_size("frontier size", size)
        self._hashes = [bytes(h) for h in hashes]
        if len(self._hashes) != size.bit_count():
            raise InvalidInput(
                f"a frontier of size {size} has {size.bit_count()} hashes, got {len(self._hashes)}"
            )
        for i, h in enumerate(self._hashes):
            _check_hash(f"frontier hash {i}", h)
        self._size = size

    @classmethod
    def from_subtrees(cls, size: int, subtree: Subtree) -> Frontier:
        """Rebuild the frontier of a stored tree of ``size`` leaves (``popcount(size)`` lookups)."""
        _check_size("frontier size", size)
        hashes, begin = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(subtree(level, begin >> level))
                begin += 1 << level
        return cls(size, hashes)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf; return ``(level, index, hash)`` of every subtree it completes.

        The first item is the leaf itself ``(0, old_size, leaf_hash)``; one more follows for
        each trailing one bit of the old size.
        """
        _check_hash("leaf hash", leaf_hash)
        h, level, index = bytes(leaf_hash), 0, self._size
        completed = [(0, index, h)]
        while index & 1:
            h = _sha256(b"\x01" + self._hashes.pop() + h).digest()
            level += 1
            index >>= 1
            completed.append((level, index, h))
        self._hashes.append(h)
        self._size += 1
        return completed

    def root(self) -> bytes:
        return _fold_right(list(self._hashes)) if self._hashes else EMPTY_ROOT

    def to_bytes(self) -> bytes:
        """``size`` as 8 bytes big-endian, then the hashes, largest subtree first."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Inverse of ``to_bytes``; ``InvalidInput`` if the length does not match the size."""
        if len(data) < 8:
            raise InvalidInput(f"frontier must be at least 8 bytes, got {len(data)}")
        size = int.from_bytes(data[:8], "big")
        want = 8 + HASH_SIZE * size.bit_count()
        if len(data) != want:
            raise InvalidInput(f"frontier of size {size} must be {want} bytes, got {len(data)}")
        return cls(size, (data[i : i + HASH_SIZE] for i in range(8, want, HASH_SIZE)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


class MemoryTree:
    """Every perfect subtree of a tree, in memory: the reference subtree store.

    Level ``l`` is kept as one ``bytearray`` of its complete nodes' hashes (32 bytes each),
    so a million leaves take about 64 MB. ``subtree`` refuses anything not yet complete,
    as a persistent store must.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        level = bytearray()
        for i, h in enumerate(leaf_hashes):
            if len(h) != HASH_SIZE:
                raise InvalidInput(f"leaf hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
            level += h
        self._size = len(level) // HASH_SIZE
        self._levels = [level]
        while len(level) >= 2 * HASH_SIZE:
            below = bytes(level)
            level = bytearray().join(
                _sha256(b"\x01" + below[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, len(below) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE)
            )
            self._levels.append(level)

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> MemoryTree:
        return cls(_sha256(b"\x00" + e).digest() for e in entries)

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf; return the subtrees it completes, as ``Frontier.append`` does."""
        _check_hash("leaf hash", leaf_hash)
        h, level, index = bytes(leaf_hash), 0, self._size
        completed = [(0, index, h)]
        self._levels[0] += h
        while index & 1:
            left = self._levels[level][(index - 1) * HASH_SIZE : index * HASH_SIZE]
            h = _sha256(b"\x01" + left + h).digest()
            level += 1
            index >>= 1
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += h
            completed.append((level, index, h))
        self._size += 1
        return completed

    def subtree(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree ``(level, index)``; ``InvalidInput`` if not complete."""
        if (
            level < 0
            or index < 0
            or level >= len(self._levels)
            or (index + 1) * HASH_SIZE > len(self._levels[level])
        ):
            raise InvalidInput(
                f"subtree (level {level}, index {index}) is not complete in a tree of "
                f"{self._size} leaves"
            )
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def root(self) -> bytes:
        return root_at(self._size, self.subtree)


# --------------------------------------------------------------------------- verifiers


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 section 2.1.3.2, with the proof length checked first against the one the
    shape of the tree dictates. Raises ``InvalidInput`` if ``index >= tree_size`` or a
    hash is not 32 bytes, ``VerificationError`` if the proof has the wrong length or does
    not lead to ``root``.
    """
    _check_index(index, tree_size)
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    _check_proof(proof)
    # Below the level where the paths to `index` and to the last leaf meet, siblings are
    # perfect subtrees ("inner"); above it, the path runs along the right edge and has a
    # left sibling for each one bit of what remains of the index ("border").
    inner = (index ^ (tree_size - 1)).bit_length()
    expected = inner + (index >> inner).bit_count()
    if len(proof) != expected:
        raise VerificationError(
            f"inclusion proof has wrong length: expected {expected}, got {len(proof)}"
        )
    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in proof:
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if r != root:
        raise VerificationError(
            f"inclusion proof for index {index} in tree size {tree_size} leads to root "
            f"{r.hex()}, expected {bytes(root).hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the new one.

    RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``, with the proof length
    checked first; the module docstring gives the rule for size 0 and equal sizes.
    Raises ``InvalidInput`` if ``old_size > new_size`` or a hash is not 32 bytes,
    ``VerificationError`` if the proof has the wrong length or either root differs.
    """
    _check_size("old size", old_size)
    _check_size("new size", new_size)
    if old_size > new_size:
        raise InvalidInput(f"old size {old_size} is past the new size {new_size}")
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    _check_proof(proof)

    if old_size == 0 or old_size == new_size:
        if proof:
            raise VerificationError(
                f"consistency proof has wrong length: expected 0, got {len(proof)}"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise VerificationError(
                f"old root of the empty tree is {bytes(old_root).hex()}, "
                f"expected {EMPTY_ROOT.hex()}"
            )
        if old_size == new_size and old_root != new_root:
            raise VerificationError(
                f"trees of the same size {new_size} have different roots: "
                f"old {bytes(old_root).hex()}, new {bytes(new_root).hex()}"
            )
        return

    # The proof starts from the largest perfect subtree the old tree ends with: its hash is
    # proof[0], or old_root itself when the old tree is that perfect subtree.
    shift = (old_size & -old_size).bit_length() - 1  # trailing zeros of old_size
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    seeded = old_size == 1 << shift
    expected = (0 if seeded else 1) + inner - shift + border
    if len(proof) != expected:
        raise VerificationError(
            f"consistency proof has wrong length: expected {expected}, got {len(proof)}"
        )
    path = [bytes(old_root), *proof] if seeded else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if fr != old_root:
        raise VerificationError(
            f"consistency proof from size {old_size} to {new_size} leads to old root "
            f"{fr.hex()}, expected {bytes(old_root).hex()}"
        )
    if sr != new_root:
        raise VerificationError(
            f"consistency proof from size {old_size} to {new_size} leads to new root "
            f"{sr.hex()}, expected {bytes(new_root).hex()}"
        )
