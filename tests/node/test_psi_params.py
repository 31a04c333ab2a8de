"""The PSI job language (node/jobs/_psi.py): what a psi or intersection_sum job may say, its
signed form, its typed view, and the refusals, each naming the field and what was expected."""

from __future__ import annotations

from decimal import Decimal

import pytest

from veil.node.errors import InvalidInput
from veil.node.jobs import leader, psi_params, run_meters, values_packing

from tests.node.test_jobs_logic import EXAMPLE_N, ISUM_PARAMS, job, parse

TWO = (("bank-a", "customers", ["phone"]), ("bank-b", "customers", ["phone"]))


def test_the_signed_form_states_every_default() -> None:
    spec = parse(job("psi"))
    assert dict(spec.params) == {"keys": {"bank-a": "phone", "bank-b": "phone"},
                                 "normalize": "exact", "output": "cardinality"}
    p = psi_params(spec)
    assert (p.output, p.receivers, p.values, p.values_node, p.paillier_n) == (
        "cardinality", (), (), None, None)
    assert leader(spec) == "bank-a"


def test_per_node_keys_and_membership_receivers_in_the_jobs_order() -> None:
    nodes = (("bank-a", "customers", ["phone"]), ("telco-b", "subscribers", ["msisdn"]))
    spec = parse(job("psi", nodes=nodes, params=(
        'keys = { "telco-b" = "msisdn", "bank-a" = "phone" }\nnormalize = "e164"\n'
        'output = "membership"\nreceivers = ["telco-b", "bank-a"]')))
    p = psi_params(spec)
    assert p.key_column("telco-b") == "msisdn" and p.peer("bank-a") == "telco-b"
    assert p.receivers == ("bank-a", "telco-b")
    assert dict(p.into) == {"bank-a": "customers_matched", "telco-b": "subscribers_matched"}


def test_an_intersection_sum_finds_its_values_node_and_leader() -> None:
    spec = parse(job("intersection_sum", params=ISUM_PARAMS + "\nscale = 2"))
    p = psi_params(spec)
    assert p.values_node == "bank-b" and p.values == ("amount",)
    assert p.scale == 2 and p.bound == Decimal("1000000.00") and p.paillier_n == int(EXAMPLE_N)
    assert leader(spec) == "bank-a"  # the node without the values adds them
    packing = values_packing(p, 1000)
    assert packing.plaintexts_for(1) == 1


@pytest.mark.parametrize(("text", "message"), [
    (job("psi", params='key = "phone"\nkeys = { "bank-a" = "phone", "bank-b" = "phone" }'),
     "exactly one of key"),
    (job("psi", params='normalize = "exact"'), "got neither"),
    (job("psi", params='keys = { "bank-a" = "phone" }'), "exactly the job's nodes"),
    (job("psi", params='key = "phone"\nnormalize = "soundex"'), "params.normalize: expected one of"),
    (job("psi", params='key = "phone"\noutput = "membership"'), "params.receivers: required"),
    (job("psi", params='key = "phone"\nreceivers = ["bank-a"]'), 'only with output = "membership"'),
    (job("psi", params='key = "phone"\noutput = "membership"\nreceivers = ["bank-z"]'),
     "'bank-z' is not one of the job's nodes"),
    (job("psi", params='key = "phone"\noutput = "membership"\nreceivers = ["bank-a"]\n'
                       'into = "customers"'), "is the dataset the job reads"),
    (job("psi", params='key = "phone"\noutput = "membership"\nreceivers = ["bank-a"]\n'
                       'into = "Bad Name"'), "params.into"),
    (job("psi", nodes=(("bank-a", "customers", ["phone", "amount"]), TWO[1])),
     "column 'amount' is not used by this psi job"),
    (job("intersection_sum", nodes=TWO, params=ISUM_PARAMS),
     "must be listed in the columns of exactly one node"),
    (job("intersection_sum", params=ISUM_PARAMS + "\nscale = 13"), "params.scale: expected"),
    (job("intersection_sum", params=ISUM_PARAMS.replace('bound = "1000000"', 'bound = "-1"')),
     "params.bound"),
    (job("intersection_sum", params=ISUM_PARAMS.replace(EXAMPLE_N, "15")), "params.paillier_n"),
    (job("intersection_sum", params=ISUM_PARAMS + '\nvalues_node = "bank-a"'),
     "does not hold the values"),
])
def test_refusals_name_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_a_psi_run_charges_both_sets_as_items() -> None:
    m = run_meters(own_keys=400, peer_points=300, bytes_sent=12_800)
    assert (m.runs, m.items, m.bytes_out) == (1, 700, 12_800)


def test_the_dry_run_shows_both_set_sizes_the_minimums_and_a_quota_too_small_for_a_run() -> None:
    from veil.node.jobs import NodePolicy, Tariff, estimate

    from tests.node.test_jobs_logic import CUSTOMERS

    spec = parse(job("psi", quota="runs = 2\nitems = 100"))
    lines = estimate(spec, spec.part("bank-a"), 400, CUSTOMERS, Tariff(),  # type: ignore[arg-type]
                     policy=NodePolicy(min_peer_set_size=50, min_intersection_size=7)).lines()
    text = "\n".join(lines)
    assert "this node's set size: at most 400 distinct keys" in text
    assert "refused below min_peer_set_size = 50" in text
    assert "min_intersection_size = 7" in text
    assert "warning: the quota's items (100) is less than one run needs" in text
