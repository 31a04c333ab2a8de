"""`make demo`: a local federation of three banks, run end to end with the real CLI.

Everything happens under ./demo-run (recreated each time): a federation CA, three
nodes ("bank-a", "bank-b", "bank-c") serving on loopback ports, an analyst, two approvers
and an auditor. A query job runs at one bank; then a sum job totals a column across all
three without any bank's part being revealed to anyone; then two banks intersect their
customers' phone numbers (how many they share, and the total amount of the shared ones)
without either learning who they are. Each step prints the `veil` command it runs, so the
output doubles as a walkthrough.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path.cwd() / "demo-run"
BANKS = ("bank-a", "bank-b", "bank-c")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def veil(*args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess[str]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    if show:
        print(f"\n$ veil {shown}", flush=True)
    r = subprocess.run([sys.executable, "-m", "veil.node.cli", *args], capture_output=True, text=True,
                       cwd=ROOT)
    out = (r.stdout + r.stderr).rstrip()
    if show and out:
        print("  " + out.replace("\n", "\n  "), flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"demo step failed (exit {r.returncode}): veil {shown}")
    return r


CHECKPOINT_NOTE = """
  A checkpoint is the node's signed statement of its log: three lines (origin: the node's
  log name; size: how many entries; root: the Merkle root hash over all of them) and the
  node's signature. A receipt is a log index plus the checkpoint it was included under;
  `veil audit prove` checks one against the other. The log grows between commands because
  every call is logged, the auditor's own reads included.
"""

FINISHED = """
demo finished: everything above ran against three real nodes over mTLS.
  Everything is under {root}: federation/ (the CA), bank-a/ bank-b/ bank-c/ (node
  directories: node.toml, state.db, the log and snapshots), alice/ olga/ sam/ audrey/
  (identities), alice-key/ (the analyst's Paillier key), *-job.toml, receipts, statement.json.
  Try next: `veil audit log demo-run/bank-a` reads a log offline; `veil node serve
  demo-run/bank-a --detach` brings a bank back for jobs of your own (its policy and tariff
  are in demo-run/bank-a/node.toml); the README walks through every step by hand.
"""


def banner(text: str) -> None:
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


#: phone numbers customers of the three banks draw from, so that the banks share customers
PHONES = [f"138{n:08d}" for n in random.Random(2026).sample(range(10**8), 1000)]


def write_customers(path: Path, n: int, seed: int) -> None:
    """Synthetic customers: every classification level, and one tiny region (4 people).
    Phones come from one shared pool, written in two styles (both normalize to the same
    digits), so that two banks have customers in common."""
    rng = random.Random(seed)
    phones = rng.sample(PHONES, n)
    regions = ["north", "south", "east", "west"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "region", "age_band", "amount", "phone", "national_id"])
        for i in range(n):
            region = "islands" if i < 4 else rng.choice(regions)
            w.writerow([f"c{seed}-{i:05d}", region, rng.choice(["20s", "30s", "40s", "50s"]),
                        rng.randint(100, 5000),
                        phones[i] if seed % 2 else f"{phones[i][:3]} {phones[i][3:7]} {phones[i][7:]}",
                        f"ID{rng.randint(0, 10**10):010d}"])


def start_node(node_dir: str) -> tuple[subprocess.Popen[str], str]:
    print(f"\n$ veil node serve {node_dir} --listen 127.0.0.1:0 &", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil.node.cli", "node", "serve", node_dir, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"node {node_dir} did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    print(f"  {line.strip()}", flush=True)
    return proc, m.group(1)


def main() -> int:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir()
    procs: list[subprocess.Popen[str]] = []
    try:
        banner("1. [federation operator] creates a CA and issues one identity per person")
        veil("pki", "init", "federation", "--federation", "demo")
        for role, name in [("analyst", "alice"), ("operator", "olga"),
                           ("subject-representative", "sam"), ("auditor", "audrey")]:
            veil("pki", "issue", "federation", "--role", role, "--name", name, "--out", name)

        banner("2. [data holders] each bank creates its node and registers a dataset; the data stays here")
        addresses: dict[str, str] = {}
        for node in BANKS:
            veil("node", "init", node, "--name", node, "--federation", "federation")
            config = (EXAMPLES / "node.toml").read_text().replace('"bank-a"', f'"{node}"')
            if node == "bank-b":  # bank-b makes differential privacy compulsory (step 9)
                config = config.replace("[policy.dp]\n", "[policy.dp]\n" + DP_REQUIRED)
            (ROOT / node / "node.toml").write_text(config)
            write_customers(ROOT / f"{node}.csv", 400, seed=BANKS.index(node))
            veil("dataset", "add", node, "customers", f"{node}.csv", "--key", "customer_id",
                 "--level", "region=public", "--level", "age_band=internal",
                 "--level", "national_id=core", "--receipt-out", f"{node}-receipt.json")
            veil("dataset", "verify", f"{node}-receipt.json", "--ca", "federation/ca.crt")
        for node in BANKS:
            proc, addresses[node] = start_node(node)
            procs.append(proc)

        banner("3. [analyst alice] sees what a node offers: names, schemas, levels, row counts; no values")
        veil("dataset", "list", "--node", addresses["bank-a"], "--identity", "alice")

        _jobs_and_queries(addresses)
        _differential_privacy(addresses)
        _federated_sum(addresses)
        _intersections(addresses)

        banner("14. [auditor audrey] verifies every node's log and keeps its checkpoint; [bank-b] "
               "replays its parts of the sum and the intersections")
        for addr in addresses.values():
            veil("audit", "verify", "--node", addr, "--identity", "audrey", "--state", "auditor")
        print(CHECKPOINT_NOTE, flush=True)
        veil("audit", "log", "--node", addresses["bank-a"], "--identity", "audrey",
             "--outcome", "PERMISSION_DENIED")
        veil("audit", "replay", "bank-b")
        print("\n  (the replay re-ran bank-b's noisy queries too: the exact aggregates from the\n"
              "  pinned snapshot plus the noise bank-b kept in its own state, never in the log)",
              flush=True)
        print(FINISHED.format(root=ROOT), flush=True)
        return 0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _jobs_and_queries(addresses: dict[str, str]) -> None:
    a = addresses["bank-a"]
    banner("4. [analyst alice] submits a signed query job; bank-a's policy wants two approvals")
    shutil.copy(EXAMPLES / "query-job.toml", ROOT / "query-job.toml")
    r = veil("job", "submit", "query-job.toml", "--node", a, "--identity", "alice")
    job = re.search(r"job ([0-9a-f]{32})", r.stdout)
    assert job is not None
    job_id = job.group(1)
    veil("job", "show", job_id, "--node", a, "--identity", "olga")

    banner("5. [operator olga, bank-a] approves, narrowing the quota; one approval is not enough")
    veil("job", "approve", job_id, "--node", a, "--identity", "olga", "--runs", "3")
    r = veil("query", job_id, "--node", a, "--identity", "alice", check=False)
    assert r.returncode != 0, "the query ran with one approval of two"

    banner("6. [subjects' representative sam] approves too (two-sided); alice's query runs")
    veil("job", "approve", job_id, "--node", a, "--identity", "sam")
    veil("query", job_id, "--node", a, "--identity", "alice", "--receipt-out",
         "query-receipt.json")
    print("\n  (the 'islands' region has 4 customers: its groups were suppressed, only counted)")

    banner("7. [analyst alice] tries what she may not: refusals are precise, and logged too")
    bad = ROOT / "peek-job.toml"
    bad.write_text((EXAMPLES / "query-job.toml").read_text().replace(
        'columns = ["region", "age_band", "amount"]', 'columns = ["region", "amount"]').split(
        "[params]")[0] + '[params]\nsql = "SELECT region, amount FROM customers"\n')
    veil("job", "submit", "peek-job.toml", "--node", a, "--identity", "alice", check=False)
    veil("audit", "verify", "--node", a, "--identity", "alice", check=False)

    banner("8. [analyst, auditor] a priced usage statement; each line cites the log entry it charges")
    veil("usage", "--node", a, "--identity", "alice")
    veil("usage", "--node", a, "--identity", "audrey", "--analyst", "alice", "--format", "json",
         "--out", "statement.json", show=False)
    veil("audit", "reconcile", "statement.json", "--node", a, "--identity", "audrey")
    veil("audit", "prove", "query-receipt.json", "--node", a, "--identity", "audrey")


DP_REQUIRED = """require_min_level = "sensitive"   # bank-b: every query on a sensitive column
require_kinds = ["query"]         # is differentially private
"""


def _differential_privacy(addresses: dict[str, str]) -> None:
    b = addresses["bank-b"]
    banner("9. [analyst alice] the differencing attack, and differential privacy at bank-b")
    customer = _lone_masked_phone("bank-b")
    print(f"  Two harmless-looking totals differ by exactly one customer's amount: all customers,\n"
          f"  and all but the one whose phone shows as {customer['masked']}. No approver reliably\n"
          "  spots such pairs among hundreds of jobs. bank-b's node.toml (written in step 2)\n"
          "  therefore requires differential privacy for queries on sensitive columns:\n"
          + "".join(f"    {line}\n" for line in DP_REQUIRED.splitlines()), flush=True)
    sql = "SELECT COUNT(*) AS customers, SUM(amount) AS total FROM customers"
    pair = {"all": sql, "all-but-one": f"{sql} WHERE phone <> '{customer['masked']}'"}
    plain = _query_job("plain-pair-job.toml", pair["all-but-one"], ["amount", "phone"], None)
    veil("job", "submit", plain, "--node", b, "--identity", "alice", check=False)

    print("\n  With a [dp] table the same queries are accepted: each released figure carries\n"
          "  noise calibrated to the declared bounds, and each run spends from alice's budget\n"
          "  at bank-b (ε = 3 per 30 days, at most 1 per run: examples/node.toml).", flush=True)
    shutil.copy(EXAMPLES / "dp-query-job.toml", ROOT / "dp-query-job.toml")
    job_id = _submit_at(b, "dp-query-job.toml")
    veil("job", "show", job_id, "--node", b, "--identity", "sam")
    for role in ("olga", "sam"):
        veil("job", "approve", job_id, "--node", b, "--identity", role, show=False)
    print("\n  (olga and sam approve it at bank-b)", flush=True)
    veil("query", job_id, "--node", b, "--identity", "alice")

    dp = "epsilon = 0.5\nmax_rows_per_subject = 1\nbounds = { amount = [0, 5000] }\n"
    totals = {}
    for name, text in pair.items():
        job = _submit_at(b, _query_job(f"dp-{name}-job.toml", text, ["amount", "phone"], dp),
                         show=False)
        for role in ("olga", "sam"):
            veil("job", "approve", job, "--node", b, "--identity", role, show=False)
        r = veil("query", job, "--node", b, "--identity", "alice", "--format", "json",
                 show=name == "all-but-one")
        doc = json.loads(r.stdout)
        totals[name] = doc["rows"][0][1]
        std = next(d["std"] for d in doc["dp"] if d["measurement"] == "SUM(amount)")
    print(f"\n  check: the noisy totals differ by {totals['all'] - totals['all-but-one']:,}; the "
          f"customer's amount is {customer['amount']:,}.\n"
          f"  Each total carries Laplace noise with a standard deviation of {std:,.0f} (bound 5,000\n"
          "  over ε = 0.5 split across the query's two figures): the pair tells nothing useful\n"
          "  about one customer, and every run of it spends budget, so repeating it to average\n"
          "  the noise away runs out at bank-b's limit.", flush=True)
    veil("usage", "--node", b, "--identity", "alice")


def _lone_masked_phone(bank: str) -> dict[str, Any]:
    """A customer of ``bank`` whose masked phone (138****1234) no other customer shares."""
    with (ROOT / f"{bank}.csv").open() as f:
        rows = list(csv.DictReader(f))
    masked = [r["phone"][:3] + "****" + r["phone"][-4:] for r in rows]
    for row, m in zip(rows, masked):
        if masked.count(m) == 1:
            return {"masked": m, "amount": int(row["amount"])}
    raise AssertionError("no customer with a unique masked phone")


def _query_job(name: str, sql: str, columns: list[str], dp: str | None) -> str:
    """A query job at bank-b (with a [dp] table when ``dp`` is given), written to ``name``."""
    text = (f'purpose = "Total spend at bank-b"\nkind = "query"\nexpires = "30d"\n'
            f'[quota]\nruns = 2\n[[nodes]]\nname = "bank-b"\ndataset = "customers"\n'
            f'columns = {json.dumps(columns)}\n[params]\nsql = "{sql}"\n')
    if dp is not None:
        text += f"[dp]\n{dp}"
    (ROOT / name).write_text(text)
    return name


def _submit_at(address: str, job_file: str, show: bool = True) -> str:
    r = veil("job", "submit", job_file, "--node", address, "--identity", "alice", show=show)
    job = re.search(r"job ([0-9a-f]{32})", r.stdout)
    assert job is not None
    return job.group(1)


def _federated_sum(addresses: dict[str, str]) -> None:
    banner("10. [analyst alice] asks all three banks for total amounts per region, in one signed job")
    print("  The analyst's Paillier key is named in the job, so every approval binds it; the\n"
          "  private key never leaves the analyst's machine (2048 bits here for speed; the\n"
          "  default is 3072).", flush=True)
    veil("keys", "paillier", "--out", "alice-key", "--bits", "2048")
    text = (EXAMPLES / "sum-job.toml").read_text().replace(
        '"analyst-paillier.pub"', '"alice-key/paillier.pub"')
    for node, address in addresses.items():
        text = text.replace(f'"{node}.example:7400"', f'"{address}"')
    (ROOT / "sum-job.toml").write_text(text)
    r = veil("job", "submit", "sum-job.toml", "--identity", "alice")
    job = re.search(r"job ([0-9a-f]{32})", r.stdout)
    assert job is not None
    job_id = job.group(1)

    banner("11. [each bank's approvers] decide on their own part; the sum runs once all have")
    for role in ("olga", "sam"):
        veil("job", "approve", job_id, "--node", addresses["bank-a"], "--identity", role,
             show=role == "olga")
    veil("job", "show", job_id, "--node", addresses["bank-a"], "--identity", "alice")
    r = veil("run", "sum", job_id, "--node", addresses["bank-a"], "--identity", "alice",
             "--key", "alice-key", check=False)
    assert r.returncode != 0, "the sum ran before every bank approved"
    print("\n  (bank-b and bank-c approve the same way)", flush=True)
    for node in ("bank-b", "bank-c"):
        for role in ("olga", "sam"):
            veil("job", "approve", job_id, "--node", addresses[node], "--identity", role,
                 show=False)
    veil("run", "sum", job_id, "--node", addresses["bank-a"], "--identity", "alice",
         "--key", "alice-key")
    r = veil("run", "sum", job_id, "--node", addresses["bank-a"], "--identity", "alice",
             "--key", "alice-key", "--format", "json", show=False)
    _check_totals(json.loads(r.stdout))


def _intersections(addresses: dict[str, str]) -> None:
    banner("12. [analyst alice] asks bank-a and bank-b how many customers they share (PSI)")
    print("  Each bank hashes its customers' phone numbers (normalized to digits: \"138 1234 5678\"\n"
          "  and \"13812345678\" match) to curve points, blinds them with a secret of this run and\n"
          "  sends them; the other bank blinds them again. Only doubly blinded points are\n"
          "  compared: neither bank learns who is shared, alice learns only how many.", flush=True)
    psi = _job_file("psi-job.toml", addresses, {'normalize = "e164"': 'normalize = "digits"'})
    job_id = _submit_and_approve(psi, ("bank-a", "bank-b"), addresses)
    veil("run", "psi", job_id, "--node", addresses["bank-a"], "--identity", "alice")
    r = veil("run", "psi", job_id, "--node", addresses["bank-a"], "--identity", "alice",
             "--format", "json", show=False)
    shared = _shared("bank-a", "bank-b")
    assert json.loads(r.stdout)["cardinality"] == len(shared), r.stdout
    print(f"\n  check: {len(shared)} phone numbers are in both CSV files (only this demo can read\n"
          "  both); that is the count alice got.", flush=True)

    banner("13. [analyst alice] the total amount bank-b's shared customers spent (intersection sum)")
    print("  bank-b sends each blinded point with its amount, encrypted under alice's Paillier\n"
          "  key; bank-a adds the encrypted amounts of the matching points without being able to\n"
          "  read them; only alice decrypts, and only the total.", flush=True)
    isum = _job_file("intersection-sum-job.toml", addresses,
                     {'"analyst-paillier.pub"': '"alice-key/paillier.pub"'})
    job_id = _submit_and_approve(isum, ("bank-a", "bank-b"), addresses)
    veil("run", "psi", job_id, "--node", addresses["bank-a"], "--identity", "alice",
         "--key", "alice-key")
    r = veil("run", "psi", job_id, "--node", addresses["bank-a"], "--identity", "alice",
             "--key", "alice-key", "--format", "json", show=False)
    with (ROOT / "bank-b.csv").open() as f:
        total = sum(Decimal(row["amount"]) for row in csv.DictReader(f)
                    if row["phone"].replace(" ", "") in shared)
    assert Decimal(json.loads(r.stdout)["sums"]["amount"]) == total, r.stdout
    print(f"\n  check: {total} is the plain total of bank-b's amounts over the shared phones.",
          flush=True)


def _job_file(name: str, addresses: dict[str, str], edits: dict[str, str]) -> str:
    text = (EXAMPLES / name).read_text()
    for old, new in edits.items():
        text = text.replace(old, new)
    for node, address in addresses.items():
        text = text.replace(f'"{node}.example:7400"', f'"{address}"')
    (ROOT / name).write_text(text)
    return name


def _submit_and_approve(job_file: str, nodes: tuple[str, ...], addresses: dict[str, str]) -> str:
    r = veil("job", "submit", job_file, "--identity", "alice")
    job = re.search(r"job ([0-9a-f]{32})", r.stdout)
    assert job is not None
    job_id = job.group(1)
    for node in nodes:
        for role in ("olga", "sam"):
            veil("job", "approve", job_id, "--node", addresses[node], "--identity", role,
                 show=False)
    print(f"\n  (olga and sam approve it at {' and '.join(nodes)})", flush=True)
    return job_id


def _shared(*banks: str) -> set[str]:
    sets = []
    for node in banks:
        with (ROOT / f"{node}.csv").open() as f:
            sets.append({row["phone"].replace(" ", "")
                         for row in csv.DictReader(f)})
    return set.intersection(*sets)


def _check_totals(doc: dict[str, object]) -> None:
    """The demo can read all three CSV files (no node could): the totals must be their sums."""
    totals: dict[str, Decimal] = {}
    for node in BANKS:
        with (ROOT / f"{node}.csv").open() as f:
            for row in csv.DictReader(f):
                if row["region"] != "islands":  # 4 customers per bank: below every minimum
                    totals[row["region"]] = totals.get(row["region"], Decimal(0)) + Decimal(row["amount"])
    groups, got = doc["groups"], doc["totals"]["amount"]  # type: ignore[index]
    for g, v in zip(groups, got):  # type: ignore[call-overload]
        assert Decimal(v) == totals.get(g, Decimal(0)), (g, v, totals.get(g))
    print("\n  check: each total equals the plain sum of the three banks' CSV files, which only\n"
          "  this demo can read; 'islands' (4 customers per bank) was withheld by all three.",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
