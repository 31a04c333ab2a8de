"""A small, targeted mutation run over Veil's security-critical checks.

Each mutant is one plausible bug: an exact source snippet and its replacement in one file.
For each, the file is patched in place (and always restored, even on Ctrl-C), the test
files relevant to that module run (`-x -q`, a timeout), and the mutant is *killed* if
they fail. A survivor is a check that nothing would notice losing.

    .venv/bin/python scripts/mutate.py               # every mutant
    .venv/bin/python scripts/mutate.py --only rules  # mutants whose name contains "rules"
    .venv/bin/python scripts/mutate.py --list

A snippet that is not found exactly once is an error (the code moved): update the snippet.
Never run two of these at once: each patches the worktree. Byte-code goes to a fresh
PYTHONPYCACHEPREFIX per mutant, so a same-size patch is never hidden by a stale .pyc.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# which test files guard which module (fast ones first: -x stops at the first failure)
TESTS = {
    "grants": ["tests/test_mutation_killers_wire.py", "tests/test_jobs_wire.py",
               "tests/test_query_wire.py"],
    "rpc": ["tests/test_mutation_killers_wire.py", "tests/test_node_wire.py",
            "tests/test_audit_wire.py", "tests/test_jobs_wire.py"],
    "pki": ["tests/test_security_rules.py", "tests/test_pki.py", "tests/test_node_wire.py"],
    "sandbox": ["tests/test_security_rules.py", "tests/test_sandbox_engine.py"],
    "queries": ["tests/test_mutation_killers_wire.py", "tests/test_query_wire.py"],
    "jobs": ["tests/test_security_rules.py", "tests/test_jobs_logic.py",
             "tests/test_mutation_killers_wire.py", "tests/test_jobs_wire.py"],
    "audit": ["tests/test_merkle.py", "tests/test_checkpoint.py", "tests/test_security_rules.py",
              "tests/test_log.py", "tests/test_audit_wire.py"],
    "server": ["tests/test_mutation_killers_wire.py", "tests/test_jobs_wire.py"],
}


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: str  # a key of TESTS


G, R, P = "node/grants.py", "node/_rpc.py", "node/pki.py"
SR, SE = "sandbox/_rules.py", "sandbox/_engine.py"
M, C, N = "node/audit/_merkle.py", "node/audit/_checkpoint.py", "node/audit/_note.py"

MUTANTS = [
    # ---- the survivors of issue 9 section 5
    Mutant("grants: decision role need not be the sender's role", G,
           "decision.approver != caller.name or decision.role != caller.role",
           "decision.approver != caller.name", "grants"),
    Mutant("grants: signed spec's analyst need not be the caller", G,
           "if spec.analyst != caller.name:\n            raise PolicyDenied(\n                f\"the job names",
           "if False:\n            raise PolicyDenied(\n                f\"the job names", "grants"),
    Mutant("queries: sandbox sees every column of the dataset", "node/queries.py",
           "for c in ds.columns if c.name in allowed", "for c in ds.columns", "queries"),
    Mutant("queries: node min_group_size does not reach the sandbox", "node/queries.py",
           "min_group_size=policy.min_group_size,", "min_group_size=10,", "queries"),
    Mutant("queries: masks do not reach the sandbox", "node/queries.py",
           "masked_columns=policy.masked_columns_for(ds.name),", "masked_columns={},", "queries"),
    Mutant("queries: denied columns do not reach the sandbox", "node/queries.py",
           "denied_columns=policy.denied_columns_for(ds.name, [c.name for c in ds.columns]),",
           "denied_columns=frozenset(),", "queries"),
    Mutant("queries: denied functions do not reach the sandbox", "node/queries.py",
           "denied_functions=frozenset(policy.deny_functions),",
           "denied_functions=frozenset(),", "queries"),
    Mutant("rules: HAVING not checked", SR,
           "            self._check(having, \"HAVING\")", "            pass", "sandbox"),
    Mutant("rules: sensitive column allowed in GROUP BY", SR,
           "        for g in groups:\n            self._check(g, \"GROUP BY\")",
           "        for g in groups:\n            pass", "sandbox"),
    Mutant("engine: large minimums count rows, not subjects", SE,
           "columns.append(f\"count(DISTINCT {core.key_sql}) >= {k} AS __veil_ok\")",
           "columns.append(f\"count(*) >= {k} AS __veil_ok\")", "sandbox"),
    Mutant("rules: denying count does not deny count(*)", SR,
           "name == \"count_star\" and \"count\" in policy.denied_functions",
           "False", "sandbox"),
    Mutant("server: analysts list other analysts' jobs", "node/server.py",
           "            analyst = call.identity.name\n", "", "server"),
    Mutant("grants: decision for another node accepted", G,
           "if decision.node != self.config.name:", "if False:", "grants"),
    Mutant("grants: revoked or expired job can be decided", G,
           "if job.state in (\"revoked\", \"expired\"):", "if False:", "grants"),
    Mutant("grants: expired job can be decided", G,
           "if job.state in (\"revoked\", \"expired\"):", "if job.state == \"revoked\":",
           "grants"),
    Mutant("pki: CA-signed certificate of another federation accepted", P,
           "if federation != self.federation:", "if False:", "pki"),
    Mutant("jobs: estimate rounded half up", "node/jobs/_policy.py",
           "shown = self.max_price.quantize(TOTAL_QUANTUM, rounding=ROUND_CEILING)",
           "shown = self.max_price.quantize(TOTAL_QUANTUM)", "jobs"),
    Mutant("auditor: stored older checkpoints not compared", "node/auditor.py",
           "if old.root_hash != frontier.root():", "if False:", "audit"),
    Mutant("grants: an analyst may view another analyst's job", G,
           "if caller.role == \"analyst\" and found.spec.analyst != caller.name:", "if False:",
           "grants"),
    Mutant("server: an analyst may ask for another analyst's list", "node/server.py",
           "if analyst not in (None, call.identity.name):", "if False:", "server"),
    # ---- node/grants.py
    Mutant("grants: any role may decide", G,
           "if caller.role not in APPROVER_ROLES:", "if False:", "grants"),
    Mutant("grants: a role that is not required may decide", G,
           "if decision.role not in job.required:", "if False:", "grants"),
    Mutant("grants: an approval may widen the quota", G,
           "            check_narrowing(job.spec.quota, decision.quota)", "            pass",
           "grants"),
    Mutant("grants: decisions are not final", G,
           "            if prior is not None:", "            if False:", "grants"),
    Mutant("grants: anyone may revoke", G,
           "if caller.role != \"operator\":\n            raise PolicyDenied(f\"only the node's operator",
           "if False:\n            raise PolicyDenied(f\"only the node's operator", "grants"),
    Mutant("grants: non-analysts may run jobs", G,
           "if caller.role != \"analyst\":\n            raise PolicyDenied(f\"only the job's analyst",
           "if False:\n            raise PolicyDenied(f\"only the job's analyst", "grants"),
    Mutant("grants: admit skips the quota", G,
           "        found.quota.check(found.used, Meters(runs=1))\n", "", "grants"),
    Mutant("grants: the charge skips the quota", G,
           "            current.quota.check(current.used, meters)\n", "", "grants"),
    Mutant("grants: the charge skips the runnable re-check", G,
           "            _check_runnable(current, caller, current.spec.kind)\n", "", "grants"),
    Mutant("grants: another analyst may run the job", G,
           "    if job.spec.analyst != caller.name:\n        raise PolicyDenied(",
           "    if False:\n        raise PolicyDenied(", "grants"),
    Mutant("grants: a job of another kind may run", G,
           "    if job.spec.kind != kind:", "    if False:", "grants"),
    Mutant("grants: a revoked job may run", G,
           "    if job.revoked:\n        raise ApprovalRequired(",
           "    if False:\n        raise ApprovalRequired(", "grants"),
    Mutant("grants: an expired job may run", G,
           "    check_not_expired(job.spec)\n    job.status", "    job.status", "grants"),
    Mutant("grants: an unapproved job may run", G,
           "    job.status.require_approved(job.id)", "    pass", "grants"),
    Mutant("grants: usage not accumulated", G,
           "json.dumps((current.used + meters).to_dict(), sort_keys=True)",
           "json.dumps(meters.to_dict(), sort_keys=True)", "grants"),
    # ---- node/_rpc.py
    Mutant("rpc: any role may call any method", R,
           "if call.identity.role not in m.roles:", "if False:", "rpc"),
    Mutant("rpc: the negative list is not checked", R,
           "        if reason:\n            raise PolicyDenied(reason)",
           "        if False:\n            raise PolicyDenied(reason)", "rpc"),
    Mutant("rpc: the CRL is not reloaded", R,
           "            self.trust.reload()  #", "            pass  #", "rpc"),
    Mutant("rpc: a refusal's effect still runs", R,
           "effect=call.effect if error is None else None", "effect=call.effect", "rpc"),
    Mutant("rpc: errors are not logged with their status", R,
           "\"status\": \"OK\" if error is None else error.status,", "\"status\": \"OK\",", "rpc"),
    Mutant("rpc: meters logged for refused calls", R,
           "if call.meters and error is None:", "if call.meters:", "rpc"),
    Mutant("rpc: the caller is not logged", R,
           "else {\"role\": ident.role, \"name\": ident.name, \"fingerprint\": ident.fingerprint},",
           "else None,", "rpc"),
    Mutant("rpc: the result digest is not logged", R,
           "        record[\"result_sha256\"] = call.result_sha256", "        pass", "rpc"),
    Mutant("rpc: the job is not logged", R,
           "        record[\"job\"] = call.job_id\n", "        pass\n", "rpc"),
    Mutant("rpc: no receipt trailer", R,
           "        _trailers(context, receipt)\n", "", "rpc"),
    # ---- node/pki.py
    Mutant("pki: not issued by the CA accepted", P,
           "            cert.verify_directly_issued_by(self.ca_cert)", "            pass", "pki"),
    Mutant("pki: not-yet-valid certificate accepted", P,
           "if now < cert.not_valid_before_utc:", "if False:", "pki"),
    Mutant("pki: expired certificate accepted", P,
           "if now > cert.not_valid_after_utc:", "if False:", "pki"),
    Mutant("pki: revoked certificate accepted", P,
           "if cert.serial_number in self._revoked:", "if False:", "pki"),
    Mutant("pki: a CA certificate accepted as a member", P,
           "if bc is None or bc.ca:", "if bc is None:", "pki"),
    Mutant("pki: an unknown role accepted", P,
           "        if role not in ROLES:\n            raise Unauthenticated(\n                f\"certificate carries",
           "        if False:\n            raise Unauthenticated(\n                f\"certificate carries",
           "pki"),
    Mutant("pki: an invalid name accepted", P,
           "if name is None or not _NAME_RE.fullmatch(name):", "if name is None:", "pki"),
    # ---- sandbox/_rules.py
    Mutant("rules: WHERE not checked", SR,
           "            self._check(where, \"WHERE\")", "            pass", "sandbox"),
    Mutant("rules: ORDER BY not checked", SR,
           "            self._check(h, \"ORDER BY\")", "            pass", "sandbox"),
    Mutant("rules: row-level output allowed", SR,
           "            and not any(_has_aggregate(e) for e in [*self.items, having, *hidden])",
           "            and False", "sandbox"),
    Mutant("rules: denied functions ignored", SR,
           "    if name in policy.denied_functions or (", "    if (", "sandbox"),
    Mutant("rules: functions outside the allowlist", SR,
           "    if name not in SCALARS and name not in AGGREGATES:", "    if False:", "sandbox"),
    Mutant("rules: aggregates allowed in WHERE", SR,
           "if clause in (\"WHERE\", \"GROUP BY\"):", "if clause == \"GROUP BY\":", "sandbox"),
    Mutant("rules: FILTER inside an aggregate allowed", SR,
           "        if e.get(\"filter\") is not None:", "        if False:", "sandbox"),
    Mutant("rules: expressions inside an aggregate allowed", SR,
           "        if arg.get(\"class\") != \"COLUMN_REF\":", "        if False:", "sandbox"),
    Mutant("rules: MIN/MAX on sensitive columns regardless of policy", SR,
           "if name in _MIN_MAX and not self.policy.allow_min_max:", "if False:", "sandbox"),
    Mutant("rules: key column usable outside COUNT", SR,
           "        if role == \"key\":\n            doing =", "        if False:\n            doing =",
           "sandbox"),
    Mutant("rules: sensitive column usable outside aggregates", SR,
           "        if role == \"sensitive\":\n            raise QueryRejected(\n                f\"sensitive column",
           "        if False:\n            raise QueryRejected(\n                f\"sensitive column",
           "sandbox"),
    Mutant("rules: masked column summed", SR,
           "        elif role == \"masked\":\n            if name != \"count\":",
           "        elif role == \"masked\":\n            if False:", "sandbox"),
    Mutant("rules: core columns usable", SR,
           "return column.level == \"core\" or fold(column.name) in self.policy.denied_columns",
           "return fold(column.name) in self.policy.denied_columns", "sandbox"),
    Mutant("rules: denied columns usable", SR,
           "return column.level == \"core\" or fold(column.name) in self.policy.denied_columns",
           "return column.level == \"core\"", "sandbox"),
    # ---- sandbox/_engine.py
    Mutant("engine: external access left on", SE,
           "\"SET enable_external_access = false; \"", "\"\"", "sandbox"),
    Mutant("engine: configuration not locked", SE,
           "\"SET lock_configuration = true\"", "\"SELECT 1\"", "sandbox"),
    Mutant("engine: row bound off by one", SE,
           "columns += [f\"{rows} > {sum(stats.top[: k - 1])} AS __veil_ok\"",
           "columns += [f\"{rows} >= {sum(stats.top[: k - 1])} AS __veil_ok\"", "sandbox"),
    Mutant("engine: undecided groups never re-counted", SE,
           "undecided = f\"NOT __veil_ok AND __veil_r >= {k}\"", "undecided = \"false\"",
           "sandbox"),
    Mutant("engine: exact path threshold off by one", SE,
           "AND __veil_p.__veil_n >= {k} AND {same}", "AND __veil_p.__veil_n >= {k - 1} AND {same}",
           "sandbox"),
    # ---- node/audit/
    Mutant("merkle: leaf hash without domain separation", M,
           "return _sha256(b\"\\x00\" + entry).digest()", "return _sha256(entry).digest()", "audit"),
    Mutant("merkle: inclusion proof length not checked", M,
           "    if len(proof) != expected:\n        raise VerificationError(\n            f\"inclusion",
           "    if False:\n        raise VerificationError(\n            f\"inclusion", "audit"),
    Mutant("merkle: inclusion root not compared", M,
           "    if r != root:", "    if False:", "audit"),
    Mutant("merkle: consistency old root not checked for equal sizes", M,
           "if old_size == new_size and old_root != new_root:", "if False:", "audit"),
    Mutant("merkle: index past the tree accepted", M,
           "    if index >= tree_size:", "    if index > tree_size:", "audit"),
    Mutant("checkpoint: origin not compared", C,
           "if origin is not None and checkpoint.origin != origin:", "if False:", "audit"),
    Mutant("checkpoint: root hash length not checked", C,
           "        if len(root) != HASH_SIZE:", "        if False:", "audit"),
    Mutant("note: non-canonical base64 accepted", N,
           "    if base64.b64encode(raw).decode(\"ascii\") != value:", "    if False:", "audit"),
]


def _patch(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    n = text.count(old)
    if n != 1:
        raise SystemExit(
            f"mutate.py: snippet for {path.relative_to(ROOT)} found {n} times, expected once "
            f"(the code moved? update the snippet):\n{old}"
        )
    path.write_text(text.replace(old, new))
    return text


def run_one(m: Mutant, timeout: float) -> tuple[str, float, str]:
    path = ROOT / m.file
    original = _patch(path, m.old, m.new)
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="veil-mutant-") as cache:
            env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
                   "-p", "no:cacheprovider", *TESTS[m.tests]]
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                return "killed (timeout)", time.monotonic() - start, ""
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        verdict = "survived" if proc.returncode == 0 else "killed"
        return verdict, time.monotonic() - start, lines[0] if lines else ""
    finally:
        path.write_text(original)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="run mutants whose name contains this text")
    ap.add_argument("--limit", type=int, default=0, help="run at most this many mutants")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.only in m.name]
    if args.limit:
        chosen = chosen[: args.limit]
    # check every snippet before patching anything
    bad = 0
    for m in chosen:
        count = (ROOT / m.file).read_text().count(m.old)
        if count != 1:
            print(f"snippet of mutant {m.name!r} found {count} times in {m.file}, expected once; "
                  "update it", file=sys.stderr)
            bad += 1
    if bad:
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name}  [{m.file}]")
        return 0
    # a SIGTERM becomes an exception, so the finally in run_one restores the file
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    survived = []
    for i, m in enumerate(chosen, 1):
        verdict, took, why = run_one(m, args.timeout)
        print(f"[{i}/{len(chosen)}] {verdict:17} {took:6.1f}s  {m.name}"
              + (f"  <- {why}" if why else ""), flush=True)
        if verdict == "survived":
            survived.append(m)
    killed = len(chosen) - len(survived)
    print(f"\nmutation score: {killed}/{len(chosen)} killed ({100 * killed / len(chosen):.0f}%)")
    for m in survived:
        print(f"  survived: {m.name} [{m.file}]")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
