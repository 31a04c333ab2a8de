"""The analyst's sum workflow from the command line, against three real nodes:
`veil keys paillier`, `veil job submit` (to every node the job names), `veil job show` (each
node's approval state), `veil run sum` in every format."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from decimal import Decimal
from pathlib import Path

from veil.node import keys
from veil.node.client import Client

from tests.conftest import Federation, Member, run_cli
from tests.wire.test_sum_wire import INDUSTRIES, expected, sum_job, three_banks  # noqa: F401


def _approve_everywhere(federation: Federation, members: dict[str, Member], job_id: str) -> None:
    for m in members.values():
        for role, name in (("operator", f"olga-{m.name}"), ("subject-representative", f"sam-{m.name}")):
            with Client(m.address, federation.identity(role, name)) as c:
                if c.job(job_id).state == "approved":
                    break
                c.approve(job_id)


def test_keys_paillier_writes_an_owner_only_private_key_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "k"
    r = run_cli("keys", "paillier", "--out", str(out), "--bits", "2048")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out / keys.PRIVATE_FILE).st_mode) == 0o600
    assert keys.load_private(out).public_key.n == keys.load_public(out / keys.PUBLIC_FILE).n
    assert keys.load_public(out / keys.PUBLIC_FILE).n.bit_length() == 2048
    again = run_cli("keys", "paillier", "--out", str(out), "--bits", "2048")
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_submit_show_and_run_a_sum_from_the_command_line(
    federation: Federation, three_banks, paillier_keys: Path, tmp_path: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, data = three_banks
    job_file = tmp_path / "sum-job.toml"
    job_file.write_text(sum_job(members, paillier_keys))
    alice = str(federation.identity("analyst", "alice"))

    r = run_cli("job", "submit", str(job_file), "--identity", alice)  # no --node: every node
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["bank-a", "bank-b", "bank-c"]
    ids = {line.split()[2] for line in lines}
    assert len(ids) == 1, lines  # one signed job, one id everywhere
    (job_id,) = ids

    # not approved anywhere: run refused, nothing decrypted
    r = run_cli("run", "sum", job_id, "--node", members["bank-a"].address, "--identity", alice,
                "--key", str(paillier_keys))
    assert r.returncode == 1 and "approv" in r.stderr, r.stderr

    # approved at bank-a only: show says so for every node
    for role, name in (("operator", "olga-bank-a"), ("subject-representative", "sam-bank-a")):
        with Client(members["bank-a"].address, federation.identity(role, name)) as c:
            if c.job(job_id).state != "approved":
                c.approve(job_id)
    r = run_cli("job", "show", job_id, "--node", members["bank-a"].address, "--identity", alice)
    assert r.returncode == 0, r.stderr
    assert f"job {job_id} at {members['bank-a'].address}: approved" in r.stdout
    assert f"bank-b ({members['bank-b'].address}): pending" in r.stdout
    assert f"bank-c ({members['bank-c'].address}): pending" in r.stdout

    _approve_everywhere(federation, members, job_id)
    totals, counts, withheld = expected(data)
    # --node names a contributor: the CLI finds the aggregator from the job itself
    r = run_cli("run", "sum", job_id, "--node", members["bank-c"].address, "--identity", alice,
                "--key", str(paillier_keys), "--format", "json",
                "--receipt-out", str(tmp_path / "receipt.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["groups"] == INDUSTRIES
    assert [Decimal(v) for v in doc["totals"]["exposure"]] == [totals[g] for g in INDUSTRIES]
    assert doc["counts"] == [counts[g] for g in INDUSTRIES]
    assert doc["withheld"] == [withheld[g] for g in INDUSTRIES]
    assert [x["node"] for x in doc["receipts"]] == ["bank-a", "bank-b", "bank-c"]
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["log_index"] == doc["receipts"][0]["log_index"]
    prove = run_cli("audit", "prove", str(tmp_path / "receipt.json"), "--node",
                    members["bank-a"].address,
                    "--identity", str(federation.identity("auditor", "audrey")))
    assert prove.returncode == 0, prove.stderr

    r = run_cli("run", "sum", job_id, "--node", members["bank-a"].address, "--identity", alice,
                "--key", str(paillier_keys), "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["group", "exposure", "rows", "withheld_by"]
    assert [(g, Decimal(t), int(n), int(w)) for g, t, n, w in rows[1:]] == [
        (g, totals[g], counts[g], withheld[g]) for g in INDUSTRIES]

    r = run_cli("run", "sum", job_id, "--node", members["bank-a"].address, "--identity", alice,
                "--key", str(paillier_keys))
    assert r.returncode == 0, r.stderr
    assert "withheld by" in r.stdout and "3 nodes" in r.stdout  # mining: nobody has rows
    for name in members:
        assert f"  {name}: log index " in r.stdout


def test_run_sum_with_another_key_is_refused_before_any_charge(
    federation: Federation, three_banks, paillier_keys: Path, tmp_path: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    job_file = tmp_path / "sum-job.toml"
    job_file.write_text(sum_job(members, paillier_keys, runs=1))
    alice = str(federation.identity("analyst", "alice"))
    r = run_cli("job", "submit", str(job_file), "--identity", alice)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[2]
    _approve_everywhere(federation, members, job_id)
    other = tmp_path / "other-key"
    keys.generate(other)
    r = run_cli("run", "sum", job_id, "--node", members["bank-a"].address, "--identity", alice,
                "--key", str(other))
    assert r.returncode == 1 and "not the one job" in r.stderr, r.stderr
    with Client(members["bank-a"].address, federation.identity("analyst", "alice")) as c:
        assert c.job(job_id).used.get("runs", 0) == 0  # the one run is still there
    r = run_cli("run", "sum", job_id, "--node", members["bank-a"].address, "--identity", alice,
                "--key", str(paillier_keys), "--format", "json")
    assert r.returncode == 0, r.stderr


def test_any_unique_job_id_prefix_works_and_an_ambiguous_one_lists_the_candidates(
    federation: Federation, three_banks, paillier_keys: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    members, _ = three_banks
    a = members["bank-a"].address
    alice = str(federation.identity("analyst", "alice"))
    ids: dict[str, str] = {}
    with Client(a, federation.identity("analyst", "alice")) as c:
        for runs in range(1, 18):  # 17 ids, 16 first digits: two share one
            job = c.submit_job(sum_job(members, paillier_keys, runs=runs), base_dir=Path("/"))
            if job.id[0] in ids:
                pair = (ids[job.id[0]], job.id)
                break
            ids[job.id[0]] = job.id
    r = run_cli("job", "show", pair[1][:12], "--node", a, "--identity", alice)
    assert r.returncode == 0, r.stderr
    assert f"job {pair[1]} at {a}" in r.stdout
    common = next(i for i in range(32) if pair[0][i] != pair[1][i])
    r = run_cli("job", "show", pair[1][:common], "--node", a, "--identity", alice)
    assert r.returncode == 1 and "ambiguous" in r.stderr
    assert pair[0] in r.stderr and pair[1] in r.stderr
    r = run_cli("job", "show", "zz12", "--node", a, "--identity", alice)
    assert r.returncode == 1 and "hex digits" in r.stderr
    free = [d for d in "0123456789abcdef" if d not in ids]
    if free:  # a prefix no visible job has
        r = run_cli("job", "show", free[0] * 6, "--node", a, "--identity", alice)
        assert r.returncode == 1 and "no job whose id starts with" in r.stderr
