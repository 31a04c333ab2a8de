"""The dataset catalog and its registration receipts (登记存证).

Registering a file imports it into an immutable, content-addressed Parquet snapshot
(`node.snapshot`), classifies every column, and signs a receipt: canonical JSON of
the dataset name, version, snapshot SHA-256, row count, schema with levels, key
column and time, signed with the node's Ed25519 key over ``"veil-receipt-v1\\n" ||
body``. The catalog row and the ``dataset.registered`` log entry commit in one
transaction. Nothing here ever exposes a value, a minimum, a maximum or a sample.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.node.errors import AlreadyExists, InvalidInput, NotFound, PolicyDenied, VerificationError
from veil.sandbox import LEVELS
from veil.node.log import Log, canonical_json, event, now_rfc3339
from veil.node.snapshot import Progress, import_file
from veil.protocols import signing

DEFAULT_LEVEL = "sensitive"
RECEIPT_DOMAIN = signing.RECEIPT.tag
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    level: str


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    sha256: str
    rows: int
    columns: tuple[ColumnInfo, ...]
    key_column: str
    registered_at: str
    receipt: bytes
    signature: bytes
    log_index: int
    #: the newest version of its dataset (what a new job pins); set by the SDK's listings
    latest: bool = False

    def levels(self) -> dict[str, str]:
        return {c.name: c.level for c in self.columns}

    @property
    def ref(self) -> str:
        """``name@sha256``: how log entries, jobs and results name this exact version."""
        return f"{self.name}@{self.sha256}"

    def snapshot_path(self, snapshots_dir: Path) -> Path:
        return snapshots_dir / f"{self.sha256}.parquet"


@dataclass(frozen=True)
class LevelChange:
    """A column whose level differs from the previous version's."""

    column: str
    old: str
    new: str

    @property
    def lowers(self) -> bool:
        return LEVELS.index(self.new) < LEVELS.index(self.old)


@dataclass(frozen=True)
class Registration:
    dataset: DatasetVersion
    created: bool  # False: identical content and classification was already registered
    #: levels that differ from the previous version's, for columns it had too
    changes: tuple[LevelChange, ...] = ()
    #: text columns that look numeric (a stray value made them VARCHAR): see --type
    numeric_looking: tuple[str, ...] = ()


def parse_levels(specs: list[str]) -> dict[str, str]:
    """``["amount=sensitive", "region=public"]`` → ``{"amount": "sensitive", ...}``."""
    levels: dict[str, str] = {}
    for spec in specs:
        column, sep, level = spec.partition("=")
        if not sep or not column or not level:
            raise InvalidInput(f"--level takes COLUMN=LEVEL, got {spec!r}")
        if level not in LEVELS:
            raise InvalidInput(
                f"unknown level {level!r} for column {column!r}; levels are {', '.join(LEVELS)}"
            )
        if column in levels and levels[column] != level:
            raise InvalidInput(f"column {column!r} is given two levels: {levels[column]}, {level}")
        levels[column] = level
    return levels


class Signer(Protocol):
    """Anything that signs with the node's Ed25519 key (``pki.LocalIdentity`` does)."""

    def sign(self, data: bytes) -> bytes: ...


def register(
    conn: sqlite3.Connection,
    log: Log,
    signing_key: Signer,
    snapshots_dir: Path,
    *,
    node: str,
    name: str,
    source: Path,
    key_column: str,
    levels: Mapping[str, str],
    declassify: Collection[str] = (),
    types: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Registration:
    """Import ``source`` as a new version of dataset ``name`` and sign its receipt.

    Classification never weakens silently: a column the previous version had keeps its level
    unless ``levels`` names it, and a level lower than the previous one (out of ``core``, or
    to any less protected level) is refused unless the column is in ``declassify``; each
    such lowering is logged as its own ``dataset.declassified`` event, with old and new
    levels, before the registration. New columns default to ``sensitive``.
    """
    if not _NAME.match(name):
        raise InvalidInput(
            f"dataset name {name!r} is not usable in SQL: use lowercase letters, digits and _ "
            "(starting with a letter or _), at most 63 characters"
        )
    for column, level in levels.items():
        if level not in LEVELS:
            raise InvalidInput(f"unknown level {level!r} for column {column!r}")
    existing_files = set(snapshots_dir.glob("*.parquet"))
    snap = import_file(source, snapshots_dir, types=types, progress=progress)
    try:
        names = [c for c, _ in snap.columns]
        unknown = sorted(set(levels) - set(names))
        if unknown:
            raise InvalidInput(
                f"--level names unknown column(s) {', '.join(unknown)} in {source.name}; "
                f"columns are {', '.join(names)}"
            )
        if key_column not in names:
            raise InvalidInput(
                f"--key names unknown column {key_column!r} in {source.name}; "
                f"columns are {', '.join(names)}"
            )
        if levels.get(key_column) == "core":
            raise InvalidInput(
                f"the key column {key_column!r} cannot be 'core': Veil counts distinct subjects "
                "with it to enforce minimum group sizes"
            )
        latest = _latest(conn, name)
        before = latest.levels() if latest is not None else {}
        previous = latest.version if latest is not None else 0
        columns = tuple(
            ColumnInfo(c, t, levels.get(c) or before.get(c) or DEFAULT_LEVEL)
            for c, t in snap.columns
        )
        changes = tuple(
            LevelChange(c.name, before[c.name], c.level)
            for c in columns if c.name in before and before[c.name] != c.level
        )
        lowered = [ch for ch in changes if ch.lowers]
        for ch in lowered:
            if ch.column not in declassify:
                raise InvalidInput(
                    f"column {ch.column!r} is {ch.old} in version {previous} of {name}; "
                    f"--level {ch.column}={ch.new} would lower it to {ch.new}. Lowering a "
                    f"level is logged as a declassification: pass --declassify {ch.column} "
                    "to do it on purpose"
                )
        stray = sorted(set(declassify) - {ch.column for ch in lowered})
        if stray:
            raise InvalidInput(
                f"--declassify {stray[0]}: that column's level is not being lowered "
                f"(give its new level with --level {stray[0]}=LEVEL)"
            )
        if (
            latest is not None
            and latest.sha256 == snap.sha256
            and latest.columns == columns
            and latest.key_column == key_column
        ):
            return Registration(latest, created=False)
        if lowered:
            log.append(event(
                "dataset.declassified", dataset=name, version=previous + 1,
                sha256=snap.sha256,
                columns=[{"column": ch.column, "from": ch.old, "to": ch.new} for ch in lowered],
            ))
        version = 1 if latest is None else latest.version + 1
        registered_at, body, signature, insert = _version_row(
            signing_key, node, name, version, snap, columns, key_column)

        receipt = log.append(
            event(
                "dataset.registered",
                dataset=name,
                version=version,
                sha256=snap.sha256,
                rows=snap.rows,
                receipt_sha256=_sha256(body),
            ),
            effect=insert,
        )
        return Registration(
            DatasetVersion(
                name, version, snap.sha256, snap.rows, columns, key_column,
                registered_at, body, signature, receipt.log_index,
            ),
            created=True,
            changes=changes,
            numeric_looking=snap.numeric_looking,
        )
    except BaseException:
        if snap.path not in existing_files and not _referenced(conn, snap.sha256):
            snap.path.unlink(missing_ok=True)
        raise


def _version_row(signing_key: Signer, node: str, name: str, version: int, snap: Any,
                 columns: tuple[ColumnInfo, ...], key_column: str,
                 ) -> tuple[str, bytes, bytes, Callable[[sqlite3.Connection, int], None]]:
    """A version's signed registration receipt, and the effect that inserts its row."""
    registered_at = now_rfc3339()
    body = canonical_json(
        {
            "v": 1,
            "type": "veil.dataset-registration",
            "node": node,
            "dataset": name,
            "version": version,
            "sha256": snap.sha256,
            "source_sha256": snap.source_sha256,
            "rows": snap.rows,
            "schema": [[c.name, c.type, c.level] for c in columns],
            "key_column": key_column,
            "registered_at": registered_at,
        }
    )
    signature = signing_key.sign(RECEIPT_DOMAIN + body)

    def insert(tx: sqlite3.Connection, index: int) -> None:
        latest = tx.execute("SELECT MAX(version) FROM datasets WHERE name = ?", (name,)).fetchone()
        if (latest[0] or 0) + 1 != version:
            raise AlreadyExists(f"dataset {name} got version {latest[0]} from another "
                                "registration meanwhile; nothing was stored, try again")
        tx.execute(
            "INSERT INTO datasets(name, version, sha256, rows, columns_json, key_column,"
            " registered_at, receipt, signature, log_index)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, version, snap.sha256, snap.rows,
             json.dumps([[c.name, c.type, c.level] for c in columns]), key_column,
             registered_at, body, signature, index),
        )

    return registered_at, body, signature, insert


@dataclass(frozen=True)
class Staged:
    """A derived version ready to commit with the entry of the call that made it."""

    version: int
    receipt_sha256: str
    effect: Callable[[sqlite3.Connection, int], None]


def stage_derived(conn: sqlite3.Connection, signing_key: Signer, *, node: str, name: str,
                  snap: Any, source: DatasetVersion) -> Staged:
    """A new version of ``name`` holding a subset of ``source``'s rows (a PSI membership
    result), classified exactly like ``source``. Its row is inserted by the returned effect,
    inside the log entry of the call that computed it, so the version exists if and only if
    that call is logged as released. Refused when it would lower a level that the latest
    version of ``name`` has."""
    if not _NAME.match(name):
        raise InvalidInput(f"dataset name {name!r} is not usable in SQL")
    latest = _latest(conn, name)
    if latest is not None:
        before = latest.levels()
        order = {lv: i for i, lv in enumerate(LEVELS)}
        for c in source.columns:
            if c.name in before and order[c.level] < order[before[c.name]]:
                raise PolicyDenied(
                    f"dataset {name}: column {c.name!r} is {before[c.name]} in its latest "
                    f"version; a PSI result classified like {source.name} ({c.level}) would "
                    "lower it. Name another dataset in the job's `into`")
    version = 1 if latest is None else latest.version + 1
    _, body, _, insert = _version_row(signing_key, node, name, version, snap, source.columns,
                                      source.key_column)
    origin = privacy_unit(conn, source.name)

    def effect(tx: sqlite3.Connection, index: int) -> None:
        insert(tx, index)
        tx.execute("INSERT OR IGNORE INTO dataset_sources(name, source) VALUES (?, ?)",
                   (name, origin))

    return Staged(version, _sha256(body), effect)


def privacy_unit(conn: sqlite3.Connection, name: str) -> str:
    """The dataset whose people ``name`` describes: itself, or for a dataset derived from
    another (a PSI membership result), the one it was first derived from. A differential-
    privacy budget is kept per privacy unit, so that a subset of the same customers under a
    new name does not come with a fresh budget."""
    row = conn.execute("SELECT source FROM dataset_sources WHERE name = ?", (name,)).fetchone()
    return name if row is None else str(row[0])


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _referenced(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM datasets WHERE sha256 = ?", (sha256,)).fetchone() is not None


def _row(row: tuple[Any, ...]) -> DatasetVersion:
    name, version, sha, rows, columns_json, key, at, receipt, sig, index = row
    return DatasetVersion(
        name, int(version), sha, int(rows),
        tuple(ColumnInfo(*c) for c in json.loads(columns_json)),
        key, at, bytes(receipt), bytes(sig), int(index),
    )


_COLUMNS = (
    "name, version, sha256, rows, columns_json, key_column, registered_at, receipt, signature,"
    " log_index"
)


def _latest(conn: sqlite3.Connection, name: str) -> DatasetVersion | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
    ).fetchone()
    return None if row is None else _row(row)


def current(conn: sqlite3.Connection, name: str) -> DatasetVersion:
    """The newest version of ``name``; NotFound naming the datasets there are."""
    found = _latest(conn, name)
    if found is None:
        names = [r[0] for r in conn.execute("SELECT DISTINCT name FROM datasets ORDER BY name")]
        raise NotFound(
            f"no dataset named {name!r} on this node; datasets: {', '.join(names) or '(none)'}"
        )
    return found


def version(conn: sqlite3.Connection, name: str, sha256: str) -> DatasetVersion:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM datasets WHERE name = ? AND sha256 = ? ORDER BY version DESC",
        (name, sha256),
    ).fetchone()
    if row is None:
        raise NotFound(f"no version of dataset {name!r} with snapshot {sha256}")
    return _row(row)


def all_versions(conn: sqlite3.Connection) -> dict[str, list[DatasetVersion]]:
    out: dict[str, list[DatasetVersion]] = {}
    for row in conn.execute(f"SELECT {_COLUMNS} FROM datasets ORDER BY name, version"):
        ds = _row(row)
        out.setdefault(ds.name, []).append(ds)
    return out


def verify_receipt(body: bytes, signature: bytes, node_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check a registration receipt's signature; return its parsed body."""
    try:
        signing.verify(node_key, signing.RECEIPT, body, signature)
    except signing.SignatureInvalid:
        raise VerificationError(
            "receipt signature does not verify with the node's signing key: the receipt was "
            "altered or was not issued by this node"
        ) from None
    try:
        parsed = json.loads(body)
    except ValueError:
        raise VerificationError("receipt body is not JSON") from None
    if not isinstance(parsed, dict) or parsed.get("type") != "veil.dataset-registration":
        raise VerificationError("receipt body is not a Veil dataset registration")
    return parsed
