"""PSI between two real nodes: real gRPC bidirectional streams over mTLS, real X25519, real
Paillier keys and logs. Every result is compared with Python's set intersection and plain
sums over the same rows."""

from __future__ import annotations

import csv
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node import catalog, keys
from veil.node.client import Client
from veil.node.errors import VeilError
from veil.protocols.psi import normalize

from tests.conftest import Federation, Member
from tests.wire.test_sum_wire import _entry, submit_and_approve

LEVELS = {"phone": "sensitive", "spend": "sensitive", "visits": "internal"}


def customers(path: Path, rows: list[tuple[str, Decimal, int]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "phone", "spend", "visits"])
        for i, (phone, spend, visits) in enumerate(rows):
            w.writerow([f"{path.stem}-{i:05d}", phone, f"{spend:.2f}", visits])
    return path


def phones(rng: random.Random, n: int) -> list[str]:
    return [f"+86 138 {rng.randrange(10**8):08d}" for _ in range(n)]


@pytest.fixture
def bank_and_telco(tmp_path: Path, start_nodes):  # type: ignore[no-untyped-def]
    rng = random.Random(13)
    shared = phones(rng, 150)
    a_only, b_only = phones(rng, 200), phones(rng, 120)
    a_keys = shared + a_only + shared[:20]  # 20 duplicates at the bank
    b_keys = [p.replace(" ", "") for p in shared] + b_only + [shared[0]]  # spacing differs
    rng.shuffle(a_keys)
    rng.shuffle(b_keys)
    data = {
        "bank": [(p, Decimal(rng.randint(0, 10**6)) / 100, rng.randint(0, 9)) for p in a_keys],
        "telco": [(p, Decimal(rng.randint(-10**5, 10**6)) / 100, rng.randint(0, 30))
                  for p in b_keys],
    }
    sources = {name: customers(tmp_path / f"{name}.csv", rows) for name, rows in data.items()}
    members = start_nodes(sources, levels=LEVELS, key_column="customer_id",
                          dataset="customers")
    return members, data


def psi_job(members: dict[str, Member], *, kind: str = "psi", params: str, columns=None,
            runs: int = 3) -> str:
    columns = columns or {"bank": ["phone"], "telco": ["phone"]}
    nodes = "".join(
        f'[[nodes]]\nname = "{m.name}"\naddress = "{m.address}"\ndataset = "customers"\n'
        f'columns = {json.dumps(columns[m.name])}\n' for m in members.values())
    return f'''purpose = "Shared customers of a bank and a telco"
kind = "{kind}"
expires = "1d"
[quota]
runs = {runs}
{nodes}
[params]
key = "phone"
normalize = "digits"
{params}
'''


def _set(rows, mode="digits") -> set[str]:
    return {n for p, *_ in rows if (n := normalize(p, mode)) is not None}


def test_cardinality_equals_the_python_set_intersection_and_carries_both_receipts(
    federation: Federation, bank_and_telco  # type: ignore[no-untyped-def]
) -> None:
    members, data = bank_and_telco
    job_id = submit_and_approve(federation, members, psi_job(members, params=""))
    seen = []
    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice:
        out = alice.run_psi(job_id, progress=lambda d, t: seen.append((d, t)))
    a, b = _set(data["bank"]), _set(data["telco"])
    assert out.cardinality == len(a & b) == 150
    assert (out.set_size, out.peer_set_size) == (len(a), len(b))
    assert [r["node"] for r in out.receipts] == ["bank", "telco"]
    for r in out.receipts:
        entry = _entry(members[r["node"]], r["log_index"])
        assert entry["status"] == "OK" and entry["job"] == job_id
        psi = entry["details"]["psi"]
        assert psi["set_size"] in (len(a), len(b)) and len(psi["result"]) == 64
        assert entry["meters"]["items"] == len(a) + len(b)
        assert "150" not in json.dumps(psi)  # the count is committed to, not logged


def test_membership_stores_the_matching_rows_at_the_receiver_only(
    federation: Federation, bank_and_telco  # type: ignore[no-untyped-def]
) -> None:
    members, data = bank_and_telco
    text = psi_job(members, params='output = "membership"\nreceivers = ["telco"]\n'
                                   'into = "shared"')
    job_id = submit_and_approve(federation, members, text)
    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice:
        out = alice.run_psi(job_id)
    a = _set(data["bank"])
    expected_rows = [i for i, (p, *_) in enumerate(data["telco"]) if normalize(p, "digits") in a]
    assert out.cardinality == len({normalize(data["telco"][i][0], "digits") for i in expected_rows})
    [ds] = out.datasets
    assert ds["node"] == "telco" and ds["dataset"] == "shared" and ds["rows"] == len(expected_rows)
    home = members["telco"].home
    conn = home.connect()
    try:
        version = catalog.current(conn, "shared")
        assert version.levels() == catalog.current(conn, "customers").levels()
    finally:
        conn.close()
    import duckdb

    ids = [r[0] for r in duckdb.connect().sql(
        f"SELECT customer_id FROM '{version.snapshot_path(home.snapshots)}'").fetchall()]
    assert ids == [f"telco-{i:05d}" for i in expected_rows]
    bank = members["bank"].home.connect()
    try:
        with pytest.raises(VeilError):
            catalog.current(bank, "shared")  # the other node stored nothing
    finally:
        bank.close()


def test_intersection_sum_equals_the_plain_sums_over_the_shared_keys(
    federation: Federation, bank_and_telco, paillier_keys: Path  # type: ignore[no-untyped-def]
) -> None:
    members, data = bank_and_telco
    text = psi_job(members, kind="intersection_sum",
                   columns={"bank": ["phone"], "telco": ["phone", "spend", "visits"]},
                   params=f'values = ["spend", "visits"]\nscale = 2\nbound = "100000000"\n'
                          f'paillier_key = "{paillier_keys / keys.PUBLIC_FILE}"')
    job_id = submit_and_approve(federation, members, text)
    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice:
        out = alice.run_psi(job_id, keys.load_private(paillier_keys))
    a = _set(data["bank"])
    spend = sum((s for p, s, _ in data["telco"] if normalize(p, "digits") in a), Decimal(0))
    visits = sum(v for p, _, v in data["telco"] if normalize(p, "digits") in a)
    assert out.cardinality == 150
    assert out.sums == {"spend": spend, "visits": Decimal(visits)}
