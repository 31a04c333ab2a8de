"""A federated sum under differential privacy across three real nodes.

Every node requires DP on its loans and funds alice with ρ = 1 (zCDP). Each node adds its
share of the Gaussian noise to its masked, encrypted part, so only the total carries all of
it; every node spends its own budget in its own log entry; replay reproduces each part.
"""

from __future__ import annotations

import json
import math
import random
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node import keys, state
from veil.node.client import Client, submit_everywhere
from veil.node.errors import VeilError
from tests.conftest import Federation, run_cli
from tests.wire.test_sum_wire import (
    INDUSTRIES,
    LEVELS,
    loans,
    random_rows,
    submit_and_approve,
    sum_job,
)

POLICY = """
[policy.dp]
require_datasets = ["loans"]

[[policy.dp.budget]]
rho = "1"
max_per_run = "0.5"
"""
DP = """
[dp]
rho = 0.25
max_rows_per_subject = 1
scale = 2
bounds = { exposure = [-5000, 20000] }
"""


def job(members, key_dir: Path, dp: str = DP) -> str:  # type: ignore[no-untyped-def]
    return sum_job(members, key_dir, extra=dp)


@pytest.fixture
def banks(tmp_path: Path, start_nodes):  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    data = {
        "bank-a": random_rows(rng, 120, ["energy", "retail", "transport"]),
        "bank-b": random_rows(rng, 90, ["energy", "retail"]) + [("transport", "north",
                                                                 Decimal("5"))] * 3,
        "bank-c": random_rows(rng, 60, ["energy", "retail", "transport"]),
    }
    sources = {name: loans(tmp_path / f"{name}.csv", rows) for name, rows in data.items()}
    members = start_nodes(sources, levels=LEVELS, key_column="loan_id",
                          toml=lambda _name, text: text + POLICY)
    return members, data


@pytest.mark.slow
def test_a_dp_sum_releases_every_group_with_the_total_noise_and_each_node_spends_its_budget(
        federation: Federation, banks, paillier_keys: Path) -> None:  # type: ignore[no-untyped-def]
    members, data = banks
    job_id = submit_and_approve(federation, members, job(members, paillier_keys))
    with Client(members["bank-a"].address, federation.identity("operator", "olga-bank-a")) as o:
        lines = "\n".join(o.job(job_id).estimate["lines"])
    assert "each run spends ρ = 0.25 (zCDP, discrete Gaussian noise)" in lines
    assert "SUM(exposure) of the total: std" in lines and "this node's share scale" in lines
    with Client(members["bank-a"].address, federation.identity("analyst", "alice"),
                node="bank-a") as alice:
        result = alice.run_sum(job_id, keys.load_private(paillier_keys))
    # no group is withheld under DP: bank-b's 3 transport loans and nobody's mining included
    assert result.withheld.tolist() == [0, 0, 0, 0]
    # ρ = 0.25 over two measurements; Δ(sum) = 20,000.00 in cents, Δ(count) = 1
    sigma_sum = 2_000_000 / math.sqrt(2 * 0.125) / 100
    for g, total, count in zip(INDUSTRIES, result.totals["exposure"].tolist(),
                               result.counts.tolist()):
        exact = sum((e for rows in data.values() for (i, _, e) in rows if i == g), Decimal(0))
        rows = sum(1 for rows in data.values() for (i, _, _) in rows if i == g)
        assert abs(float(total - exact)) < 6 * sigma_sum, (g, total, exact)
        assert abs(count - rows) < 6 * math.sqrt(1 / (2 * 0.125)), (g, count, rows)
        assert total != exact
    for m in members.values():
        conn = state.connect(m.home.state_path, readonly=True)
        try:
            assert conn.execute("SELECT analyst, dataset, measure, spent FROM dp_spent"
                                ).fetchall() == [("alice", "loans", "rho", "0.25")]
            [(index,)] = conn.execute("SELECT log_index FROM dp_releases").fetchall()
            entry = json.loads(conn.execute("SELECT entry FROM log_entries WHERE idx = ?",
                                            (index,)).fetchone()[0])
        finally:
            conn.close()
        assert entry["details"]["sum"]["dp"]["budget"] == {"measure": "rho", "spent": "0.25"}
        shares = {r["measurement"]: float(r["scale"])
                  for r in entry["details"]["sum"]["dp"]["releases"]}
        # each node adds a share (in cents): about σ/√3, never the whole σ
        assert shares["SUM(exposure)"] < sigma_sum * 100 / math.sqrt(3) * 1.05
    r = run_cli("audit", "replay", str(members["bank-b"].home.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 mismatched" in r.stdout


def test_a_sum_without_dp_is_refused_where_the_policy_requires_it(
        federation: Federation, banks, paillier_keys: Path) -> None:  # type: ignore[no-untyped-def]
    members, _ = banks
    answers = submit_everywhere(job(members, paillier_keys, dp=""),
                                federation.identity("analyst", "alice"), base_dir=Path("/"))
    for m in members.values():
        refusal = answers[m.name]
        assert isinstance(refusal, VeilError)
        assert "requires differential privacy for every sum job on dataset 'loans'" in str(
            refusal)


@pytest.mark.parametrize("dp, says", [
    (DP.replace("scale = 2", "scale = 0"), "dp.scale (0) must equal the sum's params.scale (2)"),
    (DP + 'categories = { industry = ["energy"] }\n',
     "dp.categories.industry: must be the sum's own categories"),
])
def test_a_dp_sum_whose_dp_table_disagrees_with_its_params_is_refused(
        federation: Federation, banks, paillier_keys: Path, dp: str, says: str) -> None:  # type: ignore[no-untyped-def]
    members, _ = banks
    answers = submit_everywhere(job(members, paillier_keys, dp=dp),
                                federation.identity("analyst", "alice"), base_dir=Path("/"))
    for m in members.values():
        assert isinstance(answers[m.name], VeilError)
        assert says in str(answers[m.name]), str(answers[m.name])
