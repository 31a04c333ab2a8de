"""Sum jobs in the job language: addresses, the aggregator, categories, bounds and the key.

Every bad parameter an analyst can write is refused at parse time with the parameter named,
so no approver ever sees a sum job that could not run.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from veil.node.errors import InvalidInput
from veil.node.jobs import canonical_bytes, spec_from_canonical, sum_params

from tests.node.test_jobs_logic import EXAMPLE_N, SUM_PARAMS, job, parse

N = int(EXAMPLE_N)


def sum_job(params: str = SUM_PARAMS, **kw: object) -> str:
    return job("sum", params=params, **kw)  # type: ignore[arg-type]


def test_a_full_sum_job_parses_into_typed_params() -> None:
    spec = parse(sum_job(
        'aggregator = "bank-b"\ncolumns = ["amount"]\ngroup_by = "region"\n'
        'categories = ["north", "south"]\nwhere = "age_band = \'30-39\'"\nscale = 2\n'
        f'bound = "12.5"\npaillier_n = "{hex(N)}"',
        nodes=(("bank-a", "customers", ["amount", "region", "age_band"]),
               ("bank-b", "customers", ["amount", "region", "age_band"])),
    ))
    p = sum_params(spec.params)
    assert p.aggregator == "bank-b" and p.columns == ("amount",)
    assert p.group_by == "region" and p.categories == ("north", "south") and p.groups == 2
    assert p.scale == 2 and p.bound == Decimal("12.50")
    assert p.paillier_n == N  # hex in the file, decimal in the signed form
    assert spec.params["paillier_n"] == str(N)
    assert [n.address for n in spec.nodes] == ["127.0.0.1:7400", "127.0.0.1:7401"]
    assert spec_from_canonical(canonical_bytes(spec)) == spec


def test_a_query_job_without_address_keeps_its_canonical_bytes() -> None:
    """Jobs signed before addresses existed must keep their ids: no "address": null."""
    data = canonical_bytes(parse(job("query")))
    assert b"address" not in data
    assert spec_from_canonical(data).nodes[0].address is None


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (SUM_PARAMS.replace('aggregator = "bank-a"', 'aggregator = "bank-z"'),
         "params.aggregator: 'bank-z' is not one of the job's nodes (bank-a, bank-b)"),
        (SUM_PARAMS.replace('aggregator = "bank-a"\n', ""), "params.aggregator: required"),
        (SUM_PARAMS.replace('columns = ["amount"]', "columns = []"),
         "params.columns: expected a list of 1 to 16 names, got 0"),
        (SUM_PARAMS.replace('["amount"]', '["amount", "amount"]'), "'amount' is listed twice"),
        (SUM_PARAMS + '\ngroup_by = "region"', "params.categories: required with group_by"),
        (SUM_PARAMS + '\ncategories = ["a"]', "params.categories: only with group_by"),
        (SUM_PARAMS + '\ngroup_by = "amount"\ncategories = ["a"]',
         "params.group_by: 'amount' is also a summed column"),
        (SUM_PARAMS + "\nscale = 13", "params.scale: expected an integer 0-12"),
        (SUM_PARAMS + "\nscale = -1", "params.scale: expected an integer 0-12"),
        (SUM_PARAMS.replace('bound = "1000000"', 'bound = "0"'), "params.bound: expected a number above 0"),
        (SUM_PARAMS.replace('bound = "1000000"', 'bound = "1.5"'),
         "params.bound: 1.5 has more decimal digits than scale = 0"),
        (SUM_PARAMS.replace('bound = "1000000"', 'bound = "lots"'), "params.bound: expected a decimal number"),
        (SUM_PARAMS.replace(EXAMPLE_N, str(2**1023 + 1)),
         "the key is 1024 bits; a Paillier key must have 2048 to 8192 bits"),
        (SUM_PARAMS.replace(EXAMPLE_N, str(N + 1)), "not a valid Paillier modulus"),  # even
        (SUM_PARAMS.replace(EXAMPLE_N, str((2**1024 + 643) ** 2)), "not a valid Paillier modulus"),
        (SUM_PARAMS.replace(EXAMPLE_N, "0xZZ"), "expected the modulus as decimal digits or 0x-hex"),
        (SUM_PARAMS.replace(f'paillier_n = "{EXAMPLE_N}"', 'paillier_key = "k.pub"'),
         "a key file can only be read from a job file"),
    ],
)
def test_bad_sum_params_are_refused_by_name(params: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=_literal(fragment)):
        parse(sum_job(params))


def test_too_many_totals_are_refused() -> None:
    categories = json.dumps([f"c{i}" for i in range(100_000)])
    params = (SUM_PARAMS.replace('["amount"]', '["amount", "age"]')
              + f'\ngroup_by = "region"\ncategories = {categories}')
    spec = parse(sum_job(params, nodes=(("bank-a", "c", ["amount", "age", "region"]),
                                        ("bank-b", "c", ["amount", "age", "region"]))))
    assert sum_params(spec.params).groups == 100_000
    eleven = [f"v{i}" for i in range(11)]
    wide = (SUM_PARAMS.replace('["amount"]', json.dumps(eleven))
            + f'\ngroup_by = "region"\ncategories = {categories}')
    with pytest.raises(InvalidInput, match="11 columns × 100000 categories is 1,100,000 totals"):
        parse(sum_job(wide, nodes=(("bank-a", "c", [*eleven, "region"]),
                                   ("bank-b", "c", [*eleven, "region"]))))
    many = json.dumps([f"c{i}" for i in range(100_001)])
    with pytest.raises(InvalidInput, match="params.categories: expected a list of 1 to 100,000"):
        parse(sum_job(SUM_PARAMS + f'\ngroup_by = "region"\ncategories = {many}',
                      nodes=(("bank-a", "c", ["amount", "region"]),
                             ("bank-b", "c", ["amount", "region"]))))


def test_sum_job_nodes_need_addresses_and_list_exactly_the_columns_used() -> None:
    text = sum_job().replace('address = "127.0.0.1:7401"\n', "")
    with pytest.raises(InvalidInput, match="node 'bank-b': address is required in a sum job"):
        parse(text)
    bad = sum_job().replace('"127.0.0.1:7401"', '"127.0.0.1:99999"')
    with pytest.raises(InvalidInput, match="expected host:port with a port 1-65535"):
        parse(bad)
    with pytest.raises(InvalidInput, match="column 'region' is not used by this sum job"):
        parse(sum_job(nodes=(("bank-a", "c", ["amount", "region"]), ("bank-b", "c", ["amount"]))))
    # with a filter, its columns may be listed too (the node's sandbox sees only these)
    parse(sum_job(SUM_PARAMS + "\nwhere = \"region = 'north'\"",
                  nodes=(("bank-a", "c", ["amount", "region"]), ("bank-b", "c", ["amount"]))))


def test_paillier_key_file_is_read_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "me.pub").write_text(
        json.dumps({"kind": "paillier-public-key", "n": EXAMPLE_N}))
    text = sum_job(SUM_PARAMS.replace(f'paillier_n = "{EXAMPLE_N}"',
                                      'paillier_key = "keys/me.pub"'))
    spec = parse(text, base_dir=tmp_path)
    assert sum_params(spec.params).paillier_n == N
    assert "paillier_key" not in spec.params  # the signed job holds the modulus itself
    with pytest.raises(InvalidInput, match="paillier_key: no such file"):
        parse(text.replace("keys/me.pub", "keys/other.pub"), base_dir=tmp_path)
    (tmp_path / "keys" / "me.pub").write_text('{"n": 5}')
    with pytest.raises(InvalidInput, match="is not a Paillier public key file"):
        parse(text, base_dir=tmp_path)
    both = text.replace('paillier_key = "keys/me.pub"',
                        f'paillier_key = "keys/me.pub"\npaillier_n = "{EXAMPLE_N}"')
    with pytest.raises(InvalidInput, match="give paillier_key .a file. or paillier_n, not both"):
        parse(both, base_dir=tmp_path)


def _literal(text: str) -> str:
    import re

    return re.escape(text)
