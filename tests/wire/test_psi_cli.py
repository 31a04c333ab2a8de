"""`veil run psi` against two real nodes: table and json output, asked at either node."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from veil.node import keys
from veil.protocols.psi import normalize

from tests.conftest import Federation, run_cli
from tests.wire.test_psi_wire import _set, bank_and_telco, psi_job  # noqa: F401
from tests.wire.test_sum_wire import submit_and_approve


def test_run_psi_prints_the_count_and_both_receipts_at_either_node(
    federation: Federation, bank_and_telco  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, data = bank_and_telco
    job_id = submit_and_approve(federation, members, psi_job(members, params=""))
    alice = str(federation.identity("analyst", "alice"))
    # asked at the telco (not the leader): the CLI finds the leader from the job
    r = run_cli("run", "psi", job_id[:12], "--node", members["telco"].address, "--identity",
                alice)
    assert r.returncode == 0, r.stderr
    expected = len(_set(data["bank"]) & _set(data["telco"]))
    assert f"intersection: {expected:,} distinct keys" in r.stdout
    assert "bank: log index" in r.stdout and "telco: log index" in r.stdout
    r = run_cli("run", "psi", job_id, "--node", members["bank"].address, "--identity", alice,
                "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["cardinality"] == expected and doc["datasets"] == []
    assert [x["node"] for x in doc["receipts"]] == ["bank", "telco"]


def test_run_psi_of_an_intersection_sum_needs_the_key_and_prints_the_sums(
    federation: Federation, bank_and_telco, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, data = bank_and_telco
    text = psi_job(members, kind="intersection_sum",
                   columns={"bank": ["phone"], "telco": ["phone", "spend"]},
                   params=f'values = ["spend"]\nscale = 2\nbound = "100000000"\n'
                          f'paillier_key = "{paillier_keys / keys.PUBLIC_FILE}"')
    job_id = submit_and_approve(federation, members, text)
    alice = str(federation.identity("analyst", "alice"))
    r = run_cli("run", "psi", job_id, "--node", members["bank"].address, "--identity", alice)
    assert r.returncode == 1 and "--key DIR" in r.stderr, r.stderr
    r = run_cli("run", "psi", job_id, "--node", members["bank"].address, "--identity", alice,
                "--key", str(paillier_keys), "--format", "json")
    assert r.returncode == 0, r.stderr
    a = _set(data["bank"])
    spend = sum((s for p, s, _ in data["telco"] if normalize(p, "digits") in a), Decimal(0))
    assert json.loads(r.stdout)["sums"] == {"spend": str(spend)}
