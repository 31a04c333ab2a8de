"""`veil dataset add | verify` and `veil node init` as a data holder uses them.

Each bad input gets a clear message, exit status 1, and leaves nothing behind: no
snapshot file, no catalog row, no log entry.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from veil.node.home import NodeHome
from tests.conftest import Federation, make_node, run_cli, write_customers

LEVEL_ARGS = ["--level", "region=public", "--level", "age_band=internal",
              "--level", "national_id=core"]


@pytest.fixture
def home(federation: Federation, tmp_path: Path) -> NodeHome:
    return make_node(federation, tmp_path, "bank-a")


def _state(home: NodeHome) -> tuple[int, int, list[str]]:
    conn = sqlite3.connect(home.state_path)
    try:
        entries = conn.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0]
        datasets = conn.execute("SELECT COUNT(*) FROM datasets").fetchone()[0]
    finally:
        conn.close()
    return entries, datasets, sorted(p.name for p in home.snapshots.iterdir())


def add(home: NodeHome, path: Path, *extra: str, name: str = "customers"):  # type: ignore[no-untyped-def]
    return run_cli("dataset", "add", str(home.path), name, str(path), "--key", "customer_id",
                   *extra)


def test_add_registers_a_version_with_a_verifiable_receipt(home: NodeHome, tmp_path: Path,
                                                           federation: Federation) -> None:
    src = write_customers(tmp_path / "c.csv")
    receipt = tmp_path / "receipt.json"
    r = add(home, src, *LEVEL_ARGS, "--receipt-out", str(receipt))
    assert r.returncode == 0, r.stderr
    assert "registered customers version 1: 60 rows" in r.stdout
    v = run_cli("dataset", "verify", str(receipt), "--ca", str(federation.dir / "ca.crt"))
    assert v.returncode == 0, v.stderr
    assert "valid receipt: node 'bank-a' registered customers version 1" in v.stdout
    # a tampered receipt fails
    data = json.loads(receipt.read_text())
    import base64

    body = base64.b64decode(data["body"]).replace(b'"rows":60', b'"rows":61')
    data["body"] = base64.b64encode(body).decode()
    receipt.write_text(json.dumps(data))
    v = run_cli("dataset", "verify", str(receipt), "--ca", str(federation.dir / "ca.crt"))
    assert v.returncode == 1
    assert "receipt signature does not verify" in v.stderr


def test_readding_identical_content_reports_the_existing_version(home: NodeHome, tmp_path: Path) -> None:
    src = write_customers(tmp_path / "c.csv")
    assert add(home, src, *LEVEL_ARGS).returncode == 0
    before = _state(home)
    r = add(home, src, *LEVEL_ARGS)
    assert r.returncode == 0
    assert "identical content already registered as customers version 1" in r.stdout
    assert _state(home) == before
    # new content makes a new version; the old snapshot is kept
    src2 = write_customers(tmp_path / "c2.csv", rows=61)
    r = add(home, src2, *LEVEL_ARGS)
    assert "registered customers version 2: 61 rows" in r.stdout
    assert len(_state(home)[2]) == 2


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", [], "missing.csv"),
        ("ragged", [], "ragged.csv"),
        ("empty", [], "empty.csv"),
        ("good", ["--level", "salary=public"], "--level names unknown column(s) salary"),
        ("good", ["--level", "region=secret"], "unknown level 'secret'"),
        ("good", ["--level", "region"], "--level takes COLUMN=LEVEL"),
        ("good_badkey", [], "--key names unknown column 'customer_id'"),
        ("text", [], "unsupported"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(
    home: NodeHome, tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    path = tmp_path / f"{setup}.csv"
    if setup in ("good", "good_badkey"):
        write_customers(path)
    elif setup == "ragged":
        path.write_text("customer_id,region\nc1,north\nc2,south,extra\nc3,east\n")
    elif setup == "empty":
        path.write_text("")
    elif setup == "text":
        path = tmp_path / "notes.txt"
        path.write_text("hello\n")
    if setup == "good_badkey":
        path.write_text(path.read_text().replace("customer_id", "cust"))
    before = _state(home)
    r = add(home, path, *args)
    assert r.returncode == 1, r.stdout
    assert message in r.stderr, r.stderr
    assert r.stderr.startswith("veil: error: ")
    assert "Traceback" not in r.stderr
    assert _state(home) == before


def test_unreadable_file_as_directory(home: NodeHome, tmp_path: Path) -> None:
    d = tmp_path / "dir.csv"
    d.mkdir()
    before = _state(home)
    r = add(home, d)
    assert r.returncode == 1 and "dir.csv" in r.stderr
    assert _state(home) == before


def test_node_init_refuses_an_existing_directory(federation: Federation, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    r = run_cli("node", "init", str(tmp_path / "taken"), "--name", "x",
                "--federation", str(federation.dir))
    assert r.returncode == 1
    assert "already exists" in r.stderr
    assert list((tmp_path / "taken").iterdir()) == []


def test_node_init_with_a_non_node_identity_leaves_nothing(federation: Federation, tmp_path: Path) -> None:
    ident = federation.identity("analyst", "alice")
    r = run_cli("node", "init", str(tmp_path / "n"), "--name", "alice", "--identity", str(ident))
    assert r.returncode == 1
    assert "a node needs a 'node' certificate" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_node_keys_are_owner_only(home: NodeHome) -> None:
    for name in ("tls.key", "sign.key"):
        assert (home.identity_dir / name).stat().st_mode & 0o077 == 0


def test_cli_help_works() -> None:
    r = run_cli("--help")
    assert r.returncode == 0 and "dataset" in r.stdout and "audit" in r.stdout
    r = run_cli("dataset", "add")
    assert r.returncode == 2
