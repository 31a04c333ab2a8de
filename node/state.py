"""The node's state: one SQLite database in the node directory.

WAL mode with ``synchronous=FULL``: a committed transaction survives a crash or a
power cut, which is what the log's write-before-release promise rests on. Every
write that belongs to one call (the log entry, its Merkle nodes, the checkpoint,
the meters it charges, the rows it adds) happens in one ``BEGIN IMMEDIATE``
transaction, so a crash leaves all of it or none of it. Several processes may open
the database (the server and `veil dataset add`); SQLite's lock orders them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

#: tables added after the first release: created on every writable open (idempotent)
_ADDED = """
-- Differential privacy: what each analyst spent on each dataset per budget period. A row is
-- written only by a release's log entry transaction, so it always agrees with the log.
CREATE TABLE IF NOT EXISTS dp_spent (
    analyst      TEXT NOT NULL,   -- the budget's holder: an analyst, or "shared:<globs>"
    dataset      TEXT NOT NULL,
    measure      TEXT NOT NULL,   -- epsilon | rho
    period_start TEXT NOT NULL,   -- RFC 3339; 1970-01-01T00:00:00Z for a budget never renewed
    spent        TEXT NOT NULL,   -- exact decimal
    PRIMARY KEY (analyst, dataset, measure, period_start)
);
-- A dataset derived from another (a PSI membership result) and the dataset whose people it
-- describes (the first one, resolved when the derived one is made): budgets are kept there.
CREATE TABLE IF NOT EXISTS dataset_sources (
    name   TEXT PRIMARY KEY,
    source TEXT NOT NULL
);
-- Each release's per-call spend, by log index (the statement cites these).
CREATE TABLE IF NOT EXISTS dp_releases (
    log_index    INTEGER PRIMARY KEY,
    analyst      TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    measure      TEXT NOT NULL,
    period_start TEXT NOT NULL,
    spent        TEXT NOT NULL
);
-- The noise each release drew (zlib-compressed JSON), kept for replay only: never in the
-- log, never sent. OpenDP's samplers cannot be seeded, so the draws are kept instead.
CREATE TABLE IF NOT EXISTS dp_noise (
    log_index INTEGER PRIMARY KEY,
    noise     BLOB NOT NULL
);
-- The salt of each sum part's commitment (the log holds only the commitment).
CREATE TABLE IF NOT EXISTS sum_parts (
    log_index INTEGER PRIMARY KEY,
    job_id    TEXT NOT NULL,
    run_id    TEXT NOT NULL,
    salt      BLOB NOT NULL,
    UNIQUE (job_id, run_id)
);
-- The salt of each PSI part's result commitment (the log holds only the commitment).
CREATE TABLE IF NOT EXISTS psi_parts (
    log_index INTEGER PRIMARY KEY,
    job_id    TEXT NOT NULL,
    run_id    TEXT NOT NULL,
    salt      BLOB NOT NULL,
    UNIQUE (job_id, run_id)
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- The log: append-only. idx is the RFC 6962 leaf index.
CREATE TABLE IF NOT EXISTS log_entries (
    idx   INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);
-- Hash of every perfect subtree: 2**level leaves starting at leaf idx * 2**level.
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
-- One signed checkpoint per committed batch.
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    rows          INTEGER NOT NULL,
    columns_json  TEXT NOT NULL,   -- [[name, type, level], ...]
    key_column    TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    receipt       BLOB NOT NULL,   -- canonical JSON body
    signature     BLOB NOT NULL,   -- Ed25519 by the node over "veil-receipt-v1\\n" || receipt
    log_index     INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    canonical    BLOB NOT NULL,
    signature    BLOB NOT NULL,
    analyst      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    dataset      TEXT NOT NULL,    -- this node's dataset, pinned at submission:
    dataset_sha256 TEXT NOT NULL,  -- every run reads the version approvers saw
    required     TEXT NOT NULL,    -- JSON list of roles
    submitted_at TEXT NOT NULL,
    revoked      TEXT,             -- "time: reason", once revoked
    log_index    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id    TEXT NOT NULL,
    approver  TEXT NOT NULL,
    role      TEXT NOT NULL,
    canonical BLOB NOT NULL,
    signature BLOB NOT NULL,
    log_index INTEGER NOT NULL,
    PRIMARY KEY (job_id, approver, role)
);
-- One row per charged call; its log_index ties a statement line to the log.
CREATE TABLE IF NOT EXISTS usage (
    log_index   INTEGER PRIMARY KEY,
    time        TEXT NOT NULL,
    analyst     TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    method      TEXT NOT NULL,
    meters_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_job ON usage (job_id);
-- Running totals per job, updated with each usage row: quota checks read one row.
CREATE TABLE IF NOT EXISTS job_usage (
    job_id      TEXT PRIMARY KEY,
    meters_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_analyst ON usage (analyst, time);
""" + _ADDED




def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the state database with the durability settings the log relies on."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_ADDED)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def create(path: Path) -> None:
    """Create the schema in a new database file."""
    conn = connect(path)
    try:
        conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
    finally:
        conn.close()
