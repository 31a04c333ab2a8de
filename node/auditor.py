"""The auditor's side: verify a node's whole log, remember what was seen, prove receipts.

An auditor trusts only the federation CA. The node's checkpoint key comes from the
node's certificate (which carries its Ed25519 key and is checked against the CA), so
nothing is trusted on first use. ``verify`` then

1. checks the signature on the latest checkpoint;
2. refuses a checkpoint smaller than the last one this auditor verified (a rollback
   or truncation);
3. streams every entry, checks that it is canonical JSON of a known version,
   recomputes its leaf hash and compares it with what this auditor saw last time
   (a rewritten entry is reported with the first index that differs);
4. recomputes the root and compares it with the checkpoint's;
5. offline (a node directory) also compares every leaf with the node's stored tree
   and every stored checkpoint with the tree at its size;

and records the new checkpoint and leaf hashes in the auditor's state directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veil.node import pki
from veil.node.audit import (
    Checkpoint,
    Frontier,
    NoteVerifier,
    leaf_hash,
    open_checkpoint,
    verify_inclusion,
)
from veil.node.errors import InvalidInput, VerificationError
from veil.node.log import ENTRY_VERSION, canonical_json, stored_entries

Progress = Callable[[int, int], None]


class LogSource(Protocol):
    origin: str

    def verifier(self) -> NoteVerifier: ...
    def checkpoint_note(self) -> str: ...
    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]: ...


@dataclass(frozen=True)
class Report:
    origin: str
    checkpoint: Checkpoint
    previous_size: int
    entries_checked: int

    def summary(self) -> str:
        grew = self.checkpoint.size - self.previous_size
        return (
            f"{self.origin}: log verified: {self.checkpoint.size} entries, root "
            f"{self.checkpoint.root_hash.hex()[:16]}…, signature valid"
            + (f", consistent with the {self.previous_size} entries seen before (+{grew})"
               if self.previous_size else "")
        )


def node_verifier(cert_pem: bytes, trust: pki.TrustStore, origin: str) -> NoteVerifier:
    """The checkpoint verifier of the node whose certificate this is, checked against the CA."""
    ident = trust.identify(cert_pem)
    if ident.role != "node":
        raise VerificationError(f"certificate is for a {ident.role!r}, not a node")
    expected = f"veil.{ident.federation}/{ident.name}".replace(" ", "-")
    if origin != expected:
        raise VerificationError(
            f"log origin {origin!r} does not match the node's certificate (expected {expected!r})"
        )
    return NoteVerifier(origin, ident.signing_key)


class RemoteLog:
    """A node's log over the AuditService."""

    def __init__(self, client: Any) -> None:
        self.client = client
        info = client.info()
        self.origin = info.log_origin
        self._verifier = node_verifier(
            info.certificate_pem.encode(),
            pki.TrustStore.load(client.identity.ca_cert),
            self.origin,
        )

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def checkpoint_note(self) -> str:
        return str(self.client.checkpoint()[1])

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return self.client.entries(start, end)  # type: ignore[no-any-return]


class LocalLog:
    """A node's log read straight from its directory (read-only), for offline audits."""

    def __init__(self, node_dir: Path) -> None:
        from veil.node import state
        from veil.node.home import NodeHome

        home = NodeHome(node_dir)
        home.check()
        self.home = home
        self.conn = state.connect(home.state_path, readonly=True)
        self.origin = home.origin
        cert = home.identity.read_tls_cert()
        self._verifier = node_verifier(cert, pki.TrustStore.load(home.identity.ca_cert), self.origin)

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def checkpoint_note(self) -> str:
        row = self.conn.execute(
            "SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise VerificationError("the node has no signed checkpoint at all")
        return str(row[0])

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return stored_entries(self.conn, start, end)

    def stored_leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for idx, h in self.conn.execute(
            "SELECT idx, hash FROM merkle_nodes WHERE level = 0 AND idx >= ? AND idx < ?"
            " ORDER BY idx",
            (start, end),
        ):
            yield int(idx), bytes(h)

    def checkpoints(self) -> list[tuple[int, str]]:
        return [(int(s), str(n)) for s, n in self.conn.execute(
            "SELECT size, note FROM checkpoints ORDER BY size"
        )]


class AuditorState:
    """What this auditor verified last time, per log: the checkpoint and every leaf hash."""

    def __init__(self, root: Path, origin: str, verifier: NoteVerifier) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", origin)
        self.dir = root / f"{safe}-{verifier.key_id.hex()}"
        self.checkpoint_path = self.dir / "checkpoint.note"
        self.leaves_path = self.dir / "leaves.bin"
        self.verifier = verifier

    def last(self) -> Checkpoint | None:
        if not self.checkpoint_path.exists():
            return None
        return open_checkpoint(self.checkpoint_path.read_text(), self.verifier)

    def leaves(self) -> bytes:
        return self.leaves_path.read_bytes() if self.leaves_path.exists() else b""

    def save(self, note: str, leaves: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path, data in ((self.leaves_path, leaves), (self.checkpoint_path, note.encode())):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)


_DECODER = json.JSONDecoder()


def unsigned_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a signed note carries, without checking its signature (for the many
    older checkpoints of an offline audit, whose roots are compared with the entries)."""
    return Checkpoint.parse(note.split("\n\n", 1)[0] + "\n")


def check_entry(index: int, data: bytes) -> dict[str, Any]:
    """An entry must be canonical JSON of a version this verifier knows."""
    try:
        record = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be ours
        raise VerificationError(f"entry {index} is not JSON") from None
    if not isinstance(record, dict):
        raise VerificationError(
            f"entry {index} is not a JSON object, got {type(record).__name__}"
        )
    version = record.get("v")
    if type(version) is not int or version != ENTRY_VERSION:  # 1.0 and true are not 1
        raise VerificationError(f"entry {index} has unknown version {json.dumps(version)}")
    if canonical_json(record) != data:
        raise VerificationError(f"entry {index} is not in canonical form")
    return record


def verify(source: LogSource, state_dir: Path | None, progress: Progress | None = None) -> Report:
    """Verify the whole log of ``source``; update the auditor state in ``state_dir``."""
    verifier = source.verifier()
    note = source.checkpoint_note()
    cp = open_checkpoint(note, verifier, origin=source.origin)
    state = AuditorState(state_dir, source.origin, verifier) if state_dir else None
    last = state.last() if state else None
    seen = state.leaves() if state else b""
    if last is not None and cp.size < last.size:
        raise VerificationError(
            f"log was truncated or rolled back: the node's checkpoint has {cp.size} entries, "
            f"but this auditor verified {last.size} before"
        )
    local = source if isinstance(source, LocalLog) else None
    stored = local.stored_leaves(0, cp.size) if local else None
    checkpoints = iter(local.checkpoints()) if local else iter(())
    next_cp = next(checkpoints, None)
    frontier = Frontier()
    leaves = bytearray()
    expected = 0
    for index, data in source.entries(0, cp.size):
        if index != expected:
            raise VerificationError(f"entry {expected} is missing from the log")
        check_entry(index, data)
        h = leaf_hash(data)
        if stored is not None:
            s_index, s_hash = next(stored, (None, None))
            if s_index != index or s_hash != h:
                raise VerificationError(
                    f"entry {index} does not match the node's stored tree: "
                    "the entry was altered after it was logged"
                )
        if index * 32 < len(seen) and seen[index * 32 : index * 32 + 32] != h:
            raise VerificationError(
                f"entry {index} differs from what this auditor verified before: "
                "the log was rewritten from index " + str(index)
            )
        frontier.append(h)
        leaves += h
        expected += 1
        while next_cp is not None and next_cp[0] == expected:
            # older checkpoints: compare their roots (the newest one's signature was checked;
            # checking ~100k old signatures would cost more than the whole rest)
            old = unsigned_checkpoint(next_cp[1])
            if old.root_hash != frontier.root():
                raise VerificationError(
                    f"stored checkpoint for size {old.size} does not match the entries: "
                    f"an entry before index {old.size} was altered"
                )
            next_cp = next(checkpoints, None)
        if progress is not None and expected % 65536 == 0:
            progress(expected, cp.size)
    if expected != cp.size:
        raise VerificationError(
            f"log is truncated: the checkpoint covers {cp.size} entries, "
            f"the log holds {expected}"
        )
    if frontier.root() != cp.root_hash:
        raise VerificationError(
            f"root mismatch at size {cp.size}: the entries hash to "
            f"{frontier.root().hex()[:16]}…, the signed checkpoint says "
            f"{cp.root_hash.hex()[:16]}…"
        )
    if progress is not None:
        progress(expected, cp.size)
    if state is not None:
        state.save(note, bytes(leaves))
    return Report(source.origin, cp, last.size if last else 0, expected)


@dataclass(frozen=True)
class Proven:
    index: int
    checkpoint: Checkpoint
    entry: dict[str, Any]


def prove(client: Any, index: int, note: str) -> Proven:
    """Check that entry ``index`` is in the log under the signed checkpoint ``note``."""
    remote = RemoteLog(client)
    cp = open_checkpoint(note, remote.verifier(), origin=remote.origin)
    if index >= cp.size:
        raise InvalidInput(f"index {index} is past the receipt's checkpoint size {cp.size}")
    entries = list(client.entries(index, index + 1))
    if len(entries) != 1:
        raise VerificationError(f"the node did not return entry {index}")
    data = entries[0][1]
    proof = client.inclusion_proof(index, cp.size)
    verify_inclusion(leaf_hash(data), index, cp.size, proof, cp.root_hash)
    return Proven(index, cp, check_entry(index, data))


@dataclass(frozen=True)
class LogFilter:
    caller: str | None = None
    job: str | None = None
    method: str | None = None
    since: str | None = None
    until: str | None = None
    outcome: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        caller = record.get("caller") or {}
        status = record.get("status", "event" if record.get("kind") == "event" else "")
        name = record.get("method") or record.get("event", "")
        t = record.get("t", "")
        return (
            (self.caller is None or caller.get("name") == self.caller)
            and (self.job is None or record.get("job") == self.job)
            and (self.method is None or self.method.lower() in name.lower())
            and (self.since is None or t >= self.since)
            and (self.until is None or t < self.until)
            and (self.outcome is None or status == self.outcome.upper())
        )


def read_entries(source: LogSource, flt: LogFilter) -> Iterator[tuple[int, dict[str, Any]]]:
    size = open_checkpoint(source.checkpoint_note(), source.verifier()).size
    for index, data in source.entries(0, size):
        record = check_entry(index, data)
        if flt.matches(record):
            yield index, record


def open_state(path: str | None) -> Path:
    return Path(path).expanduser() if path else Path.home() / ".veil" / "auditor"


def reconcile(client: Any, statement: dict[str, Any]) -> str:
    """Check a usage statement against the node's verified log, line by line and in full.

    Every line must cite a successful call by the statement's analyst whose entry has the
    same job, method, meters and differential-privacy spend; every charged call of that
    analyst in the statement's
    period must have its line. Raises VerificationError naming the first discrepancy.
    """
    source = RemoteLog(client)
    report = verify(source, None)
    analyst = statement["analyst"]
    start, end = statement.get("from") or None, statement.get("to") or None
    charged = {
        index: record
        for index, record in read_entries(source, LogFilter(caller=analyst, since=start,
                                                            until=end, outcome="OK"))
        if record.get("kind") == "call" and record.get("meters")
    }
    for line in statement["lines"]:
        index = int(line["log_index"])
        record = charged.pop(index, None)
        if record is None:
            raise VerificationError(
                f"statement line for log index {index} has no charged call by {analyst!r} "
                "in the log"
            )
        for field_, want in (("job", line["job"]), ("method", line["method"]),
                             ("meters", line["meters"]), ("t", line["time"])):
            got = record.get(field_)
            if field_ == "meters":
                got = {k: int((got or {}).get(k, 0)) for k in want}
            if got != want:
                raise VerificationError(
                    f"statement line for log index {index}: {field_} is {want!r} in the "
                    f"statement but {got!r} in the log"
                )
        logged = ((record.get("details") or {}).get("dp") or {}).get("budget")
        stated = line.get("dp")
        if (logged is None) != (stated is None) or (logged is not None and stated is not None and (
                logged["measure"], logged["spent"]) != (stated["measure"], stated["spent"])):
            raise VerificationError(
                f"statement line for log index {index}: privacy budget spent is {stated!r} in "
                f"the statement but {logged!r} in the log"
            )
    if charged:
        missing = ", ".join(str(i) for i in sorted(charged)[:10])
        raise VerificationError(
            f"the log has charged calls by {analyst!r} that the statement omits: {missing}"
        )
    return (
        f"statement reconciles: {len(statement['lines'])} lines, each matching a logged call "
        f"of the verified log ({report.checkpoint.size} entries); no charged call omitted; "
        f"total {statement['total']} {statement['currency']}"
    )


__all__ = [
    "AuditorState", "LocalLog", "LogFilter", "Proven", "RemoteLog", "Report",
    "check_entry", "node_verifier", "open_state", "prove", "read_entries", "reconcile", "verify",
]
