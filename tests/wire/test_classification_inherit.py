"""Regression: classification never weakens silently.

Re-running `veil dataset add` without --level flags made every column `sensitive`, the
`core` one included, and a COUNT(DISTINCT national_id) job was then accepted.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from veil.node.client import Client
from veil.node.errors import PolicyDenied
from veil.node.home import NodeHome
from veil.node.server import start
from tests.conftest import Federation, make_node, run_cli, write_customers

LEVELS = ["--level", "region=public", "--level", "age_band=internal",
          "--level", "amount=sensitive", "--level", "national_id=core"]


@pytest.fixture
def home(federation: Federation, tmp_path: Path) -> NodeHome:
    return make_node(federation, tmp_path, "bank-a")


def add(home: NodeHome, path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("dataset", "add", str(home.path), "customers", str(path), "--key",
                   "customer_id", *extra)


def _levels(home: NodeHome) -> list[dict[str, str]]:
    conn = sqlite3.connect(home.state_path)
    try:
        rows = conn.execute("SELECT columns_json FROM datasets ORDER BY version").fetchall()
    finally:
        conn.close()
    return [{c: lvl for c, _t, lvl in json.loads(r[0])} for r in rows]


def _events(home: NodeHome, name: str) -> list[dict]:  # type: ignore[type-arg]
    conn = sqlite3.connect(home.state_path)
    try:
        entries = [json.loads(r[0]) for r in conn.execute("SELECT entry FROM log_entries ORDER BY idx")]
    finally:
        conn.close()
    return [e for e in entries if e.get("event") == name]


def test_readding_without_levels_keeps_core_and_refuses_the_national_id_job(
    home: NodeHome, federation: Federation, tmp_path: Path
) -> None:
    assert add(home, write_customers(tmp_path / "v1.csv"), *LEVELS).returncode == 0
    r = add(home, write_customers(tmp_path / "v2.csv", rows=90))  # new content, no --level
    assert r.returncode == 0, r.stderr
    v1, v2 = _levels(home)
    assert v2 == v1 and v2["national_id"] == "core"
    node = start(home.path, "127.0.0.1:0")
    try:
        with Client(node.address, federation.identity("analyst", "alice")) as alice:
            job = '''
purpose = "count people by national id"
kind = "query"
expires = "30d"
[quota]
runs = 1
[[nodes]]
name = "bank-a"
dataset = "customers"
columns = ["national_id"]
[params]
sql = "SELECT COUNT(DISTINCT national_id) AS n FROM customers"
'''
            with pytest.raises(PolicyDenied, match="national_id' is classified core"):
                alice.submit_job(job)
    finally:
        node.stop()


def test_lowering_a_level_needs_declassify_and_is_logged(home: NodeHome, tmp_path: Path) -> None:
    src = write_customers(tmp_path / "v1.csv")
    assert add(home, src, *LEVELS).returncode == 0
    v2 = write_customers(tmp_path / "v2.csv", rows=70)
    r = add(home, v2, "--level", "national_id=sensitive")
    assert r.returncode == 1
    assert "'national_id' is core in version 1 of customers" in r.stderr
    assert "--declassify national_id" in r.stderr
    assert len(_levels(home)) == 1 and _events(home, "dataset.declassified") == []
    r = add(home, v2, "--level", "national_id=sensitive", "--declassify", "national_id")
    assert r.returncode == 0, r.stderr
    assert "level of national_id: core -> sensitive (DECLASSIFIED" in r.stdout
    (declassified,) = _events(home, "dataset.declassified")
    assert declassified["details"]["columns"] == [
        {"column": "national_id", "from": "core", "to": "sensitive"}]
    assert declassified["details"]["version"] == 2


def test_raising_a_level_needs_no_flag_and_is_shown(home: NodeHome, tmp_path: Path) -> None:
    assert add(home, write_customers(tmp_path / "v1.csv"), *LEVELS).returncode == 0
    r = add(home, write_customers(tmp_path / "v2.csv", rows=61), "--level", "region=internal")
    assert r.returncode == 0, r.stderr
    assert "level of region: public -> internal (raised" in r.stdout
    assert _levels(home)[1]["region"] == "internal"


def test_declassify_of_a_column_not_being_lowered_is_refused(home: NodeHome, tmp_path: Path) -> None:
    assert add(home, write_customers(tmp_path / "v1.csv"), *LEVELS).returncode == 0
    r = add(home, write_customers(tmp_path / "v2.csv", rows=61), "--declassify", "region")
    assert r.returncode == 1 and "--declassify region: that column's level is not being lowered" in r.stderr


def _mixed_csv(path: Path) -> Path:
    src = write_customers(path)
    lines = src.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 3)[0] + ",n/a," + ",".join(lines[5].rsplit(",", 2)[1:])
    src.write_text("\n".join(lines) + "\n")
    return src


def test_a_mixed_numeric_column_is_reported_and_can_be_typed(home: NodeHome, tmp_path: Path) -> None:
    """Regression: a CSV column with one stray value was silently typed VARCHAR."""
    src = _mixed_csv(tmp_path / "mixed.csv")
    r = add(home, src, *LEVELS)
    assert r.returncode == 0, r.stderr
    assert "column amount was typed VARCHAR but most of its values are numbers" in r.stderr
    assert "--type amount=DOUBLE" in r.stderr
    bad = add(home, src, "--type", "amount=BIGINT")
    assert bad.returncode == 1 and "amount" in bad.stderr  # 'n/a' is no BIGINT: named, refused
    clean = write_customers(tmp_path / "clean.csv", rows=61)
    typed = add(home, clean, "--type", "amount=DECIMAL(12, 2)")
    assert typed.returncode == 0, typed.stderr
    assert "DECIMAL(12,2)" in typed.stdout and "warning" not in typed.stderr
    assert add(home, clean, "--type", "amount=blob").returncode == 1
