"""Jobs: specs, signatures, approvals, policy, quotas and prices (pure logic, real keys)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.node.errors import (
    ApprovalRequired,
    InvalidInput,
    PolicyDenied,
    QuotaExhausted,
    VerificationError,
)
from veil.node.jobs import (
    METER_NAMES,
    QUOTA_METERS,
    ApprovalRule,
    Decision,
    JobSpec,
    Meters,
    NodePart,
    NodePolicy,
    Quota,
    SignedJob,
    Tariff,
    approval_status,
    canonical_bytes,
    check_narrowing,
    check_not_expired,
    check_submission,
    decision_from_canonical,
    effective_quota,
    estimate,
    job_id,
    parse_job_toml,
    required_roles,
    sign_decision,
    sign_job,
    spec_from_canonical,
    verify_decision,
    verify_job,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NONCE = "00112233445566778899aabbccddeeff"
ANALYST_KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()

# the sample dataset of examples/: customer_id is the key column
CUSTOMERS = {
    "customer_id": "internal",
    "region": "public",
    "age_band": "internal",
    "amount": "sensitive",
    "phone": "sensitive",
    "national_id": "core",
}
TWO_SIDED = NodePolicy(
    approval=(
        ApprovalRule(frozenset({"operator"})),
        ApprovalRule(frozenset({"operator", "subject-representative"}), "sensitive"),
    )
)


#: a 2048-bit Paillier modulus (the examples' analyst key; its private half was not kept)
EXAMPLE_N = json.loads((EXAMPLES / "analyst-paillier.pub").read_text())["n"]


ISUM_PARAMS = f'key = "phone"\nvalues = ["amount"]\nbound = "1000000"\npaillier_n = "{EXAMPLE_N}"'
SUM_PARAMS = f'aggregator = "bank-a"\ncolumns = ["amount"]\nbound = "1000000"\npaillier_n = "{EXAMPLE_N}"'


def normalize(sql: str) -> str:
    """Stand-in for sandbox.normalize: drop -- comments, collapse whitespace."""
    return " ".join(re.sub(r"--[^\n]*", " ", sql).split())


def parse(text: str, **kw) -> JobSpec:
    kw = {"analyst": "alice", "nonce": NONCE, "now": NOW, "normalize_sql": normalize} | kw
    return parse_job_toml(text, **kw)


def job(
    kind: str = "query",
    *,
    quota: str = "runs = 10\nrows_scanned = 1000000",
    nodes: tuple[tuple[str, str, list[str]], ...] | None = None,
    params: str | None = None,
    expires: str = "2027-06-30T00:00:00Z",
    purpose: str = '"a study"',
) -> str:
    defaults = {
        "query": (
            (("bank-a", "customers", ["region", "amount"]),),
            'sql = "SELECT region, SUM(amount) FROM customers GROUP BY region"',
        ),
        "sum": (
            (("bank-a", "customers", ["amount"]), ("bank-b", "customers", ["amount"])),
            SUM_PARAMS,
        ),
        "psi": (
            (("bank-a", "customers", ["phone"]), ("bank-b", "customers", ["phone"])),
            'key = "phone"',
        ),
        "intersection_sum": (
            (("bank-a", "customers", ["phone"]), ("bank-b", "customers", ["phone", "amount"])),
            ISUM_PARAMS,
        ),
    }[kind]
    nodes = defaults[0] if nodes is None else nodes
    params = defaults[1] if params is None else params
    text = f'purpose = {purpose}\nkind = "{kind}"\nexpires = {expires}\n[quota]\n{quota}\n'
    for i, (name, dataset, columns) in enumerate(nodes):
        text += (
            f'[[nodes]]\nname = "{name}"\ndataset = "{dataset}"\ncolumns = {json.dumps(columns)}\n'
        )
        if kind != "query":
            text += f'address = "127.0.0.1:{7400 + i}"\n'
    return text + f"[params]\n{params}\n"


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("name", ["query-job.toml", "sum-job.toml", "psi-job.toml",
                                  "intersection-sum-job.toml"])
def test_examples_parse(name: str) -> None:
    spec = parse((EXAMPLES / name).read_text(), base_dir=EXAMPLES)
    assert spec.analyst == "alice" and spec.nonce == NONCE
    for part in spec.nodes:
        check_submission(spec, part.name, CUSTOMERS, "customer_id", TWO_SIDED)


def test_parse_fills_defaults_and_normalizes_sql() -> None:
    spec = parse(
        job(
            "query",
            params='sql = """\nSELECT region,  -- the group\n  COUNT(*)\n'
            'FROM customers GROUP BY region"""',
        )
    )
    assert spec.params["sql"] == "SELECT region, COUNT(*) FROM customers GROUP BY region"
    assert spec.expires == datetime(2027, 6, 30, tzinfo=UTC)
    assert spec.quota == Quota(runs=10, rows_scanned=1_000_000, items=None)
    assert spec.part("bank-a") == NodePart("bank-a", "customers", ("region", "amount"))
    assert spec.part("bank-z") is None
    assert parse(job("psi")).params["output"] == "cardinality"  # the least revealing


def test_whitespace_and_comments_do_not_change_a_query_job() -> None:
    a = parse(job(params='sql = "SELECT region, SUM(amount) FROM customers GROUP BY region"'))
    b = parse(
        job(
            params='sql = """SELECT region,\n\tSUM(amount) -- total\nFROM customers  '
            'GROUP BY region"""'
        )
    )
    assert canonical_bytes(a) == canonical_bytes(b)


def test_nonce_is_random_when_not_given() -> None:
    a, b = (parse(job(), nonce=None) for _ in range(2))
    assert re.fullmatch(r"[0-9a-f]{32}", a.nonce) and a.nonce != b.nonce


def _without(text: str, line_start: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(line_start))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_without(job(), "purpose"), "'purpose' is required"),
        (_without(job(), "kind"), "'kind' is required"),
        (_without(job(), "expires"), "'expires' is required"),
        (
            job().replace("[quota]\nruns = 10\nrows_scanned = 1000000\n", ""),
            "'quota' is required",
        ),
        (job().split("[[nodes]]")[0] + '[params]\nsql = "SELECT 1"\n', "'nodes' is required"),
        (job(purpose='"   "'), "purpose: must not be empty"),
        (job(purpose="42"), "purpose: expected a string"),
        (job().replace('kind = "query"', 'kind = "join"'), "kind: expected one of"),
        (job(expires="2026-11-01T00:00:00Z"), "the job expired at 2026-11-01T00:00:00Z"),
        (job(expires="2026-11-27T12:00:00Z"), "expired"),  # expiring now is expired
        (job(expires="2027-12-01T00:00:00Z"), "more than a year away"),
        (job(expires="2027-06-30T00:00:00"), "offset date-time"),  # local, ambiguous
        (job(expires="2027-06-30"), "offset date-time"),
        (job(quota="runs = 0"), "quota.runs: must be at least 1"),
        (job(quota="rows_scanned = 5"), "quota.runs: required"),
        (job(quota="runs = 1\nitems = -1"), "quota.items: expected a non-negative integer"),
        (job(quota="runs = 1\nitems = 0"), "quota.items: must be at least 1, got 0; omit items "
                                           "for no cap"),
        (job(quota="runs = 1\nrows_scanned = 0"), "quota.rows_scanned: must be at least 1"),
        (job(quota="runs = 1.5"), "quota.runs: expected a non-negative integer"),
        (job(quota="runs = true"), "quota.runs: expected a non-negative integer"),
        (job(quota="runs = 1\nresult_rows = 5"), "quota.result_rows: not a quota meter"),
        (job(params='sql = "   "'), "params.sql: must not be empty"),
        (job(params='column = "amount"'), "unknown key 'column'"),
        (job(params=""), "params.sql: required for a query job"),
        (
            job(
                "query",
                nodes=(("bank-a", "customers", ["region"]), ("bank-b", "customers", ["region"])),
            ),
            "a query job needs exactly 1 [[nodes]] entries, got 2",
        ),
        (
            job("psi", nodes=(("bank-a", "customers", ["phone"]),)),
            "a psi job needs exactly 2 [[nodes]] entries, got 1",
        ),
        (
            job("intersection_sum", nodes=(("bank-b", "customers", ["phone", "amount"]),)),
            "needs exactly 2",
        ),
        (
            job("sum", nodes=(("bank-a", "customers", ["amount"]),)),
            "a sum job needs between 2 and 64 [[nodes]] entries, got 1",
        ),
        (
            job("sum", nodes=(("bank-a", "customers", ["amount"]), ("bank-a", "c2", ["amount"]))),
            "node 'bank-a' appears twice",
        ),
        (job("sum", params=SUM_PARAMS + '\nfilter = "region = 1"'), "unknown key 'filter'"),
        (
            job(
                "sum",
                nodes=(
                    ("bank-a", "customers", ["amount", "region"]),
                    ("bank-b", "customers", ["amount"]),
                ),
            ),
            "column 'region' is not used by this sum job",
        ),
        (
            job(
                "sum",
                nodes=(("bank-a", "customers", ["total"]), ("bank-b", "customers", ["amount"])),
            ),
            "columns must include 'amount'",
        ),
        (job("psi", params='key = "phone"\noutput = "rows"'), "params.output: expected one of"),
        (job("psi", params='key = "phone"\noutput = "intersection_sum"'),
         'an intersection sum is kind = "intersection_sum"'),
        (job("psi", params='key = "phone; DROP"'), "params.key: expected an identifier"),
        (
            job(
                "intersection_sum",
                nodes=(
                    ("bank-a", "customers", ["phone", "amount"]),
                    ("bank-b", "customers", ["phone", "amount"]),
                ),
            ),
            "exactly one node (the values node); found values at bank-a, bank-b",
        ),
        (job(nodes=(("bank a", "customers", ["region"]),)), "nodes[0].name"),
        (job(nodes=(("bank-a", "customers", []),)), "nodes[0].columns"),
        (job(nodes=(("bank-a", "customers", ["a.b"]),)), "nodes[0].columns"),
        (job(nodes=(("bank-a", "customers", ["region", "region"]),)), "listed twice"),
        (job().replace('dataset = "customers"\n', ""), "nodes[0].dataset: required"),
        (
            job().replace('name = "bank-a"', 'name = "bank-a"\nrole = "x"'),
            "nodes[0]: unknown key 'role'",
        ),
        (job() + "\n[extra]\n", "job: unknown key 'extra'"),
        ("purpose = ", "job is not valid TOML"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(text)
    assert fragment in str(info.value)


def test_bad_nonce_and_analyst() -> None:
    with pytest.raises(InvalidInput, match="nonce: expected 32 lowercase hex"):
        parse(job(), nonce="xyz")
    with pytest.raises(InvalidInput, match="analyst"):
        parse(job(), analyst="")


def test_check_not_expired() -> None:
    spec = parse(job())
    check_not_expired(spec, NOW)
    with pytest.raises(ApprovalRequired, match="job expired at 2027-06-30T00:00:00Z"):
        check_not_expired(spec, spec.expires)


# ------------------------------------------------------- canonical form


names = st.sampled_from(["bank-a", "bank-b", "bank-c", "ins.1", "x_y"])
idents = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    str.strip
)
optional_count = st.none() | st.integers(0, 2**63)


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    kind = draw(st.sampled_from(["query", "sum", "psi", "intersection_sum"]))
    count = {"query": 1, "psi": 2, "intersection_sum": 2}.get(kind) or draw(st.integers(2, 5))
    node_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    key, value = draw(st.lists(idents, min_size=2, max_size=2, unique=True))
    if kind == "query":
        columns = [tuple(draw(st.lists(idents, min_size=1, max_size=4, unique=True)))]
        params = {"sql": draw(text)}
    elif kind == "sum":
        columns = [(key,)] * count
        params = {"aggregator": node_names[0], "columns": [key], "bound": "1000",
                  "paillier_n": EXAMPLE_N}
    elif kind == "psi":
        columns = [(key,)] * 2
        params = {"key": key, "output": draw(st.sampled_from(["cardinality", "membership"]))}
        if params["output"] == "membership":
            params["receivers"] = node_names[: draw(st.integers(1, 2))]
    else:
        columns = [(key,), (key, value)]
        params = {"key": key, "values": [value], "bound": "1000", "paillier_n": EXAMPLE_N}
    return JobSpec(
        purpose=draw(text),
        kind=kind,
        expires=draw(st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC))),
        quota=Quota(draw(st.integers(1, 2**63)), draw(optional_count), draw(optional_count)),
        nodes=tuple(NodePart(n, draw(idents), c, None if kind == "query" else f"{n}.example:7400")
                    for n, c in zip(node_names, columns)),
        params=params,
        nonce=draw(st.binary(min_size=16, max_size=16)).hex(),
        analyst=draw(text),
    )


@settings(max_examples=150, deadline=None)
@given(specs())
def test_canonical_round_trip(spec: JobSpec) -> None:
    data = canonical_bytes(spec)
    assert spec_from_canonical(data) == spec
    assert canonical_bytes(spec_from_canonical(data)) == data
    obj = json.loads(data)
    assert obj["v"] == 1 and list(obj) == sorted(obj)
    # sorted keys, no whitespace between tokens, UTF-8 (not \u-escaped)
    assert (
        data == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert obj["expires"].endswith("Z")


def test_canonical_form_is_exact() -> None:
    spec = parse(job("psi"))
    data = canonical_bytes(spec)
    assert data.startswith(b'{"analyst":"alice","expires":"2027-06-30T00:00:00Z","kind":"psi",')
    assert b'"v":1' in data
    obj = json.loads(data)
    for bad in (
        json.dumps(obj, sort_keys=True).encode(),  # whitespace
        json.dumps(dict(reversed(obj.items())), separators=(",", ":")).encode(),  # unsorted
        data.replace(b'"v":1', b'"v":2'),
        data.replace(b'"v":1', b'"v":1,"w":0'),
        data.replace(b'"runs":3', b'"runs":3.0').replace(b'"runs":10', b'"runs":10.0'),
        data.replace(b"2027-06-30T00:00:00Z", b"2027-06-30T00:00:00+00:00"),
        data[:-1] + b',"v":1}',  # duplicate key
        b"[]",
        b"\xff",
    ):
        with pytest.raises(InvalidInput):
            spec_from_canonical(bad)


# --------------------------------------------------------------- signing


def test_sign_and_verify() -> None:
    spec = parse(job())
    signed = sign_job(spec, ANALYST_KEY)
    assert verify_job(signed, ANALYST_KEY.public_key(), normalize_sql=normalize) == spec


def test_tampered_job_fails_verification() -> None:
    signed = sign_job(parse(job()), ANALYST_KEY)
    tampered = SignedJob(signed.canonical.replace(b'"runs":10', b'"runs":99'), signed.signature)
    assert tampered.canonical != signed.canonical
    with pytest.raises(VerificationError, match="job signature does not verify"):
        verify_job(tampered, ANALYST_KEY.public_key())
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(VerificationError):
        verify_job(SignedJob(signed.canonical, flipped), ANALYST_KEY.public_key())
    with pytest.raises(VerificationError):
        verify_job(SignedJob(signed.canonical, b"short"), ANALYST_KEY.public_key())


def test_job_signed_by_another_key_fails() -> None:
    signed = sign_job(parse(job()), OTHER_KEY)
    with pytest.raises(VerificationError):
        verify_job(signed, ANALYST_KEY.public_key())


def test_signature_is_domain_separated() -> None:
    spec = parse(job())
    bare = SignedJob(canonical_bytes(spec), ANALYST_KEY.sign(canonical_bytes(spec)))
    with pytest.raises(VerificationError):
        verify_job(bare, ANALYST_KEY.public_key())


def test_verify_refuses_sql_that_is_not_normalized() -> None:
    spec = parse(job())
    raw = replace(
        spec, params={"sql": "SELECT  region,SUM(amount)\nFROM customers GROUP BY region"}
    )
    signed = sign_job(raw, ANALYST_KEY)
    assert verify_job(signed, ANALYST_KEY.public_key()) == raw
    with pytest.raises(InvalidInput, match="not in normalized form"):
        verify_job(signed, ANALYST_KEY.public_key(), normalize_sql=normalize)


def test_replay_has_the_same_id() -> None:
    spec = parse(job())
    first = sign_job(spec, ANALYST_KEY)
    replayed = SignedJob(bytes(first.canonical), bytes(first.signature))
    assert job_id(replayed) == job_id(first) == job_id(sign_job(spec, ANALYST_KEY))
    assert re.fullmatch(r"[0-9a-f]{32}", job_id(first))
    other = sign_job(parse(job(), nonce="f" * 32), ANALYST_KEY)
    assert job_id(other) != job_id(first)  # a fresh nonce makes a new job


# ------------------------------------------------------------- decisions


def decision(
    role: str = "operator",
    verdict: str = "approve",
    *,
    job: str = "a" * 32,
    quota: Quota | None = None,
    reason: str = "",
) -> Decision:
    return Decision(job, "bank-a", f"{role}-person", role, verdict, reason, quota, NOW)


def test_decision_sign_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    d = decision(quota=Quota(runs=2, rows_scanned=None, items=None), reason="ok for 2 runs")
    signed = sign_decision(d, key)
    assert verify_decision(signed.canonical, signed.signature, key.public_key()) == d
    assert decision_from_canonical(signed.canonical) == d
    assert b'"v":1' in signed.canonical and b'"time":"2026-11-27T12:00:00Z"' in signed.canonical


def test_forged_or_tampered_decision_fails() -> None:
    approver, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = sign_decision(decision(), forger)
    with pytest.raises(VerificationError, match="decision signature does not verify"):
        verify_decision(forged.canonical, forged.signature, approver.public_key())
    genuine = sign_decision(decision("subject-representative", "reject", reason="no"), approver)
    flipped = genuine.canonical.replace(b'"reject"', b'"approve"')
    with pytest.raises(VerificationError):
        verify_decision(flipped, genuine.signature, approver.public_key())
    # a job signature is not a decision signature
    as_job = approver.sign(b"veil-job-v1\n" + genuine.canonical)
    with pytest.raises(VerificationError):
        verify_decision(genuine.canonical, as_job, approver.public_key())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"verdict": "maybe"}, "decision: expected one of approve, reject"),
        ({"verdict": "reject"}, "reason: must not be empty"),
        ({"verdict": "reject", "reason": "no", "quota": Quota(runs=1)}, "cannot carry a quota"),
        ({"job": "xyz"}, "job id"),
        ({"role": "Operator"}, "role"),
    ],
)
def test_invalid_decisions(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        decision(**kwargs)


def test_narrowing_is_allowed_widening_is_not() -> None:
    requested = Quota(runs=10, rows_scanned=1000, items=None)
    check_narrowing(requested, Quota(runs=5, rows_scanned=1000, items=7))
    check_narrowing(requested, Quota())  # nothing narrowed: as requested
    with pytest.raises(
        InvalidInput, match="widens rows_scanned: the job requested 1000, the approval gives 1001"
    ):
        check_narrowing(requested, Quota(runs=10, rows_scanned=1001))
    with pytest.raises(InvalidInput, match="widens runs"):
        check_narrowing(requested, Quota(runs=11))
    with pytest.raises(InvalidInput, match="reject the job instead"):
        check_narrowing(requested, Quota(runs=0))


def test_effective_quota_is_the_elementwise_minimum() -> None:
    requested = Quota(runs=10, rows_scanned=None, items=500)
    approvals = [
        decision("operator", quota=Quota(runs=4)),
        decision("subject-representative", quota=Quota(items=300)),
        decision("auditor", "reject", reason="ignored here"),
    ]
    node_max = Quota(runs=1000, rows_scanned=10_000, items=None)
    assert effective_quota(requested, approvals, node_max) == Quota(4, 10_000, 300)
    assert effective_quota(requested, [], None) == requested


# ---------------------------------------------------------------- policy


def test_two_sided_rule_for_sensitive_columns() -> None:
    sensitive = parse(job())  # region (public) + amount (sensitive)
    assert required_roles(sensitive, "bank-a", CUSTOMERS, TWO_SIDED) == {
        "operator",
        "subject-representative",
    }
    public = parse(
        job(
            nodes=(("bank-a", "customers", ["region"]),),
            params='sql = "SELECT region, COUNT(*) FROM customers GROUP BY region"',
        )
    )
    assert required_roles(public, "bank-a", CUSTOMERS, TWO_SIDED) == {"operator"}
    internal = parse(job(nodes=(("bank-a", "customers", ["age_band"]),), params='sql = "x"'))
    assert required_roles(internal, "bank-a", CUSTOMERS, TWO_SIDED) == {"operator"}


def test_operator_is_always_required() -> None:
    assert required_roles(parse(job()), "bank-a", CUSTOMERS, NodePolicy()) == {"operator"}


def test_rules_filter_on_kind_and_dataset() -> None:
    policy = NodePolicy(
        approval=(
            ApprovalRule(frozenset({"dpo"}), kinds=frozenset({"psi"})),
            ApprovalRule(frozenset({"auditor"}), datasets=("cust*",)),
            ApprovalRule(frozenset({"board"}), datasets=("loans",)),
        )
    )
    assert required_roles(parse(job()), "bank-a", CUSTOMERS, policy) == {"operator", "auditor"}
    psi = parse(job("psi"))
    assert required_roles(psi, "bank-b", CUSTOMERS, policy) == {"operator", "auditor", "dpo"}


def test_check_submission_returns_this_nodes_part() -> None:
    spec = parse(job("sum"))
    part = check_submission(spec, "bank-b", CUSTOMERS, "customer_id", TWO_SIDED)
    assert part == NodePart("bank-b", "customers", ("amount",), "127.0.0.1:7401")


@pytest.mark.parametrize(
    ("spec_text", "policy", "error", "fragment"),
    [
        (
            job(),
            NodePolicy(deny_analysts=frozenset({"alice"})),
            PolicyDenied,
            "analyst 'alice' is on this node's negative list",
        ),
        (
            job(nodes=(("bank-z", "customers", ["region"]),)),
            TWO_SIDED,
            InvalidInput,
            "the job has no part for node 'bank-a' (it names: bank-z)",
        ),
        (
            job(nodes=(("bank-a", "customers", ["region", "salary"]),)),
            TWO_SIDED,
            InvalidInput,
            (
                "unknown column 'salary' in dataset 'customers' (columns: customer_id, region, "
                "age_band, amount, phone, national_id)"
            ),
        ),
        (
            job(nodes=(("bank-a", "customers", ["national_id"]),)),
            TWO_SIDED,
            PolicyDenied,
            "column 'customers.national_id' is classified core",
        ),
        (
            job(),
            NodePolicy(deny_columns=("*.amount",)),
            PolicyDenied,
            (
                "column 'customers.amount' is on this node's negative list "
                "(policy.deny_columns: '*.amount')"
            ),
        ),
        (
            job(),
            NodePolicy(allow_kinds=frozenset({"sum", "psi"})),
            PolicyDenied,
            "node 'bank-a' does not run query jobs (policy.allow_kinds: sum, psi)",
        ),
        (
            job(),
            NodePolicy(max_quota=Quota(runs=5)),
            PolicyDenied,
            "quota.runs: the job asks for 10, this node allows at most 5",
        ),
        (
            job(),
            NodePolicy(max_quota=Quota(rows_scanned=999_999)),
            PolicyDenied,
            "quota.rows_scanned: the job asks for 1000000",
        ),
        (
            job(
                "sum",
                nodes=(
                    ("bank-a", "customers", ["customer_id"]),
                    ("bank-b", "customers", ["customer_id"]),
                ),
                params=SUM_PARAMS.replace('["amount"]', '["customer_id"]'),
            ),
            TWO_SIDED,
            PolicyDenied,
            "subject identifier and cannot be summed",
        ),
    ],
)
def test_submission_denials(spec_text: str, policy: NodePolicy, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        check_submission(parse(spec_text), "bank-a", CUSTOMERS, "customer_id", policy)
    assert fragment in str(info.value)


def test_max_quota_boundaries() -> None:
    spec = parse(job(quota="runs = 5"))  # rows_scanned unset: capped by effective_quota
    policy = NodePolicy(max_quota=Quota(runs=5, rows_scanned=100))
    check_submission(spec, "bank-a", CUSTOMERS, "customer_id", policy)
    assert effective_quota(spec.quota, [], policy.max_quota) == Quota(5, 100, None)


def test_psi_on_the_key_column_is_allowed() -> None:
    spec = parse(
        job(
            "psi",
            nodes=(
                ("bank-a", "customers", ["customer_id"]),
                ("bank-b", "customers", ["customer_id"]),
            ),
            params='key = "customer_id"',
        )
    )
    check_submission(spec, "bank-a", CUSTOMERS, "customer_id", TWO_SIDED)


def test_approval_status_transitions() -> None:
    required = frozenset({"operator", "subject-representative"})
    status = approval_status(required, [])
    assert (status.state, status.present, status.missing) == ("pending", set(), required)
    with pytest.raises(
        ApprovalRequired, match="missing role\\(s\\) operator, subject-representative"
    ):
        status.require_approved("j1")

    status = approval_status(required, [decision("operator"), decision("auditor")])
    assert status.state == "pending" and status.missing == {"subject-representative"}
    with pytest.raises(ApprovalRequired, match="approved so far: operator"):
        status.require_approved("j1")

    both = [decision("operator"), decision("subject-representative")]
    status = approval_status(required, both)
    assert (status.state, status.missing) == ("approved", set())
    status.require_approved("j1")

    rejected = both + [decision("subject-representative", "reject", reason="purpose too vague")]
    status = approval_status(required, rejected)
    assert status.state == "rejected"
    with pytest.raises(ApprovalRequired, match="purpose too vague"):
        status.require_approved("j1")

    # a rejection by a role this node does not require does not count
    other = approval_status(required, both + [decision("auditor", "reject", reason="x")])
    assert other.state == "approved"


def test_approval_status_guards_against_bugs() -> None:
    with pytest.raises(ValueError):
        approval_status(frozenset(), [])
    with pytest.raises(ValueError):
        approval_status(frozenset({"operator"}), [decision(), decision(job="b" * 32)])


def test_estimate_for_approvers() -> None:
    tariff = Tariff(
        "CNY",
        {
            "runs": Decimal("1.00"),
            "rows_scanned": Decimal("0.000001"),
            "result_rows": Decimal("0.01"),
            "items": Decimal("0.0001"),
        },
    )
    spec = parse(job())  # runs 10, rows_scanned 1,000,000, items uncapped
    part = spec.part("bank-a")
    est = estimate(spec, part, 50_000, CUSTOMERS, tariff, min_group_size=10)
    assert est.columns == (("region", "public"), ("amount", "sensitive"))
    assert est.max_level == "sensitive"
    assert (est.rows_per_run, est.runs, est.rows_total) == (50_000, 10, 500_000)
    assert est.reveals == "aggregates over groups of ≥ 10 subjects; suppressed groups counted"
    assert est.max_price == Decimal("11.00")  # 10 × 1.00 + 1,000,000 × 0.000001
    assert set(est.uncapped) == {"result_rows", "items"}
    assert any("11.00 CNY" in line for line in est.lines())
    capped = estimate(spec, part, 500_000, CUSTOMERS, tariff, quota=Quota(2, 600_000, 0))
    assert capped.rows_total == 600_000 and capped.max_price == Decimal("2.60")
    assert "at most 600000 (the quota's rows_scanned)" in capped.lines()[2]
    assert not any(line.startswith("warning:") for line in capped.lines())
    # a quota smaller than one run: accepted as asked, but the dry run says every run fails
    starved = estimate(spec, part, 400, CUSTOMERS, tariff, quota=Quota(5, 100, 0))
    assert starved.lines()[-1] == (
        "warning: the quota's rows_scanned (100) is less than one run scans (400): every run "
        "would be refused; ask for at least 400 per run")

    reveals = {
        "sum": "per declared group: the total and row count over the nodes that contributed it, "
               "and how many nodes withheld it (never which); no node's own part",
        "psi": "the size of the intersection; each node's set size to the other node and the "
               "analyst",
        "intersection_sum": "the size of the intersection and the totals of amount over it, to "
                            "the analyst only (encrypted under the analyst's key); both set sizes",
    }
    for kind, sentence in reveals.items():
        s = parse(job(kind))
        assert estimate(s, s.nodes[0], 1, CUSTOMERS, tariff).reveals == sentence
    member = parse(job("psi", params='key = "phone"\noutput = "membership"\n'
                                     'receivers = ["bank-a"]'))
    assert estimate(member, member.nodes[0], 1, CUSTOMERS, Tariff()).reveals == (
        "which of its own rows match, to each receiver (as a new local dataset); the size of "
        "the intersection and both set sizes to the analyst"
    )


# ------------------------------------------------------- meters and money


def test_quota_check_boundaries() -> None:
    quota = Quota(runs=10, rows_scanned=1000, items=None)
    quota.check(Meters(runs=9, rows_scanned=999), Meters(runs=1, rows_scanned=1))  # exactly
    with pytest.raises(QuotaExhausted) as info:
        quota.check(Meters(runs=9), Meters(runs=2))  # one over
    assert (info.value.meter, info.value.requested, info.value.remaining) == ("runs", 2, 1)
    with pytest.raises(QuotaExhausted, match="rows_scanned: requested 1, remaining 0"):
        quota.check(Meters(runs=1, rows_scanned=1000), Meters(rows_scanned=1))
    quota.check(Meters(runs=10), Meters())  # a zero request fits an exhausted quota
    quota.check(Meters(items=10**12), Meters(items=10**12))  # items uncapped
    assert quota.remaining(Meters(runs=3, rows_scanned=2000, items=5)) == Quota(7, 0, None)


def test_meters_are_exact_counts() -> None:
    a = Meters(runs=1, rows_scanned=5, cpu_ms=3)
    b = Meters(runs=2, bytes_out=7)
    assert a + b == Meters(runs=3, rows_scanned=5, cpu_ms=3, bytes_out=7)
    assert Meters.from_dict((a + b).to_dict()) == a + b
    assert list(a.to_dict()) == list(METER_NAMES)
    assert Meters.from_dict({"runs": 1}) == Meters(runs=1)
    for bad in ({"runs": -1}, {"runs": 1.0}, {"runs": True}, {"runz": 1}):
        with pytest.raises(InvalidInput):
            Meters.from_dict(bad)
    with pytest.raises(InvalidInput):
        Quota.from_dict({"runs": 1})
    assert tuple(Quota().to_dict()) == QUOTA_METERS


def test_tariff_is_exact() -> None:
    tariff = Tariff(
        "CNY",
        {"runs": Decimal("0.1"), "items": Decimal("0.2"), "rows_scanned": Decimal("0.000001")},
    )
    price = tariff.price(Meters(runs=1, items=1))
    assert type(price) is Decimal and price == Decimal("0.3")  # floats would give 0.30000000000000004
    assert tariff.price(Meters(rows_scanned=1_000_000)) == Decimal(1)
    many = sum((Meters(runs=1, items=1) for _ in range(1000)), Meters())
    assert tariff.price(many) == Decimal(300)
    # rounding only at the total, half up to 0.01
    assert tariff.price(Meters(rows_scanned=3)) == Decimal("0.000003")
    assert tariff.total(Meters(rows_scanned=3)) == Decimal("0.00")
    assert tariff.total(Meters(rows_scanned=5000)) == Decimal("0.01")  # 0.005 rounds up
    assert tariff.total(Meters(rows_scanned=4999)) == Decimal("0.00")
    lines = tariff.statement_lines(Meters(runs=3, cpu_ms=9))
    assert [(x.meter, x.quantity, x.amount) for x in lines] == [
        ("runs", 3, Decimal("0.3")),
        ("cpu_ms", 9, Decimal(0)),
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.builds(Meters, *[st.integers(0, 10**12)] * 7),
    st.builds(Meters, *[st.integers(0, 10**12)] * 7),
)
def test_price_is_additive(a: Meters, b: Meters) -> None:
    tariff = Tariff("EUR", {m: Decimal("0.000123") for m in METER_NAMES})
    assert tariff.price(a + b) == tariff.price(a) + tariff.price(b)


@pytest.mark.parametrize(
    ("currency", "prices", "fragment"),
    [
        ("CNY", {"runs": 0.1}, "expected a finite non-negative Decimal"),
        ("CNY", {"runs": Decimal(-1)}, "non-negative"),
        ("CNY", {"runs": Decimal("NaN")}, "finite"),
        ("CNY", {"seconds": Decimal(1)}, "unknown meter 'seconds'"),
        ("rmb", {}, "3-letter ISO 4217"),
    ],
)
def test_tariff_rejects_bad_prices(currency: str, prices: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        Tariff(currency, prices)


def test_relative_expiry_is_resolved_at_parse_time() -> None:
    from datetime import UTC, datetime, timedelta

    from veil.node.jobs import parse_job_toml

    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    text = (
        'purpose = "p"\nkind = "query"\nexpires = "30d"\n[quota]\nruns = 1\n'
        '[[nodes]]\nname = "a"\ndataset = "t"\ncolumns = ["x"]\n'
        '[params]\nsql = "SELECT COUNT(x) FROM t"\n'
    )
    spec = parse_job_toml(text, analyst="alice", normalize_sql=lambda s: s, now=now)
    assert spec.expires == now + timedelta(days=30)
    with pytest.raises(InvalidInput, match="duration from now"):
        parse_job_toml(text.replace('"30d"', '"30 days"'), analyst="alice",
                       normalize_sql=lambda s: s, now=now)
