"""Federated sums across real nodes: real gRPC, mTLS, sandboxes, Paillier keys and logs.

Totals are compared with plain Python over the same rows; every refusal names the node and
releases no total.
"""

from __future__ import annotations

import csv
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node import keys
from veil.node.client import Client, submit_everywhere
from veil.node.errors import VeilError

from tests.conftest import Federation, Member

LEVELS = {"industry": "public", "region": "public", "exposure": "sensitive"}
INDUSTRIES = ["energy", "retail", "transport", "mining"]  # mining: nobody has rows


def loans(path: Path, rows: list[tuple[str, str, Decimal]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loan_id", "industry", "region", "exposure"])
        for i, (industry, region, exposure) in enumerate(rows):
            w.writerow([f"{path.stem}-{i:05d}", industry, region, f"{exposure:.2f}"])
    return path


def random_rows(rng: random.Random, n: int, industries: list[str]) -> list[tuple[str, str, Decimal]]:
    return [(rng.choice(industries), rng.choice(["north", "south"]),
             Decimal(rng.randint(-500_000, 2_000_000)) / 100) for _ in range(n)]


def sum_job(members: dict[str, Member], key_dir: Path, *, aggregator: str = "bank-a",
            runs: int = 3, extra: str = "", bound: str = "100000000") -> str:
    nodes = "".join(
        f'[[nodes]]\nname = "{m.name}"\naddress = "{m.address}"\ndataset = "loans"\n'
        f'columns = ["exposure", "industry"]\n' for m in members.values())
    return f'''purpose = "Total exposure per industry across banks"
kind = "sum"
expires = "1d"
[quota]
runs = {runs}
{nodes}
[params]
aggregator = "{aggregator}"
columns = ["exposure"]
group_by = "industry"
categories = {json.dumps(INDUSTRIES)}
scale = 2
bound = "{bound}"
paillier_key = "{key_dir / keys.PUBLIC_FILE}"
{extra}
'''


def submit_and_approve(federation: Federation, members: dict[str, Member], text: str,
                      approve: bool = True) -> str:
    answers = submit_everywhere(text, federation.identity("analyst", "alice"), base_dir=Path("/"))
    ids = set()
    for m in members.values():
        job = answers[m.name]
        assert not isinstance(job, VeilError), job
        ids.add(job.id)
        if approve:
                with Client(m.address, federation.identity("operator", f"olga-{m.name}")) as o:
                    if o.approve(job.id).state != "approved":
                        with Client(m.address, federation.identity(
                                "subject-representative", f"sam-{m.name}")) as s:
                            s.approve(job.id)
    (job_id,) = ids  # the same signed job everywhere: one id
    return job_id


@pytest.fixture
def three_banks(tmp_path: Path, start_nodes):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    data = {
        "bank-a": random_rows(rng, 120, ["energy", "retail", "transport"]),
        "bank-b": random_rows(rng, 90, ["energy", "retail"]) + [("transport", "north", Decimal("5"))] * 3,
        "bank-c": random_rows(rng, 60, ["energy", "retail", "transport"]),
    }
    sources = {name: loans(tmp_path / f"{name}.csv", rows) for name, rows in data.items()}
    members = start_nodes(sources, levels=LEVELS, key_column="loan_id")
    return members, data


def expected(data: dict[str, list[tuple[str, str, Decimal]]], min_group: int = 10):
    totals, counts, withheld = {}, {}, {}
    for g in INDUSTRIES:
        totals[g], counts[g], withheld[g] = Decimal(0), 0, 0
        for rows in data.values():
            mine = [e for (i, _, e) in rows if i == g]
            if len(mine) < min_group:  # fewer subjects (one loan each) than the minimum
                withheld[g] += 1
                continue
            totals[g] += sum(mine, Decimal(0))
            counts[g] += len(mine)
    return totals, counts, withheld


def test_a_sum_across_three_nodes_equals_the_plain_total_and_carries_every_receipt(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]
) -> None:
    members, data = three_banks
    job_id = submit_and_approve(federation, members, sum_job(members, paillier_keys))
    with Client(members["bank-a"].address, federation.identity("analyst", "alice"),
                node="bank-a") as alice:
        result = alice.run_sum(job_id, keys.load_private(paillier_keys))
    totals, counts, withheld = expected(data)
    assert result.groups == tuple(INDUSTRIES)
    assert result.totals["exposure"].tolist() == [totals[g] for g in INDUSTRIES]
    assert result.counts.tolist() == [counts[g] for g in INDUSTRIES]
    # bank-b has 3 transport loans (< 10): withheld; nobody has mining
    assert result.withheld.tolist() == [withheld[g] for g in INDUSTRIES] == [0, 0, 1, 3]
    assert [r["node"] for r in result.receipts] == ["bank-a", "bank-b", "bank-c"]
    for r in result.receipts:
        entry = _entry(members[r["node"]], r["log_index"])
        assert entry["status"] == "OK" and entry["job"] == job_id
        assert len(entry["details"]["sum"]["commitment"]) == 64
        assert entry["meters"]["runs"] == 1 and entry["meters"]["ciphertexts"] > 0
        text = json.dumps(entry)
        for g in INDUSTRIES:  # no plaintext total or count in anyone's log
            assert str(totals[g]) not in text or totals[g] == 0
    peers = {_entry(members[n], r["log_index"])["method"] for n, r in
             zip(["bank-b", "bank-c"], result.receipts[1:])}
    assert peers == {"/veil.v1.PeerService/ContributeSum"}


def _entry(member: Member, index: int) -> dict:  # type: ignore[type-arg]
    conn = member.home.connect()
    try:
        (data,) = conn.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
    finally:
        conn.close()
    return json.loads(bytes(data))
