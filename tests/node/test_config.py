"""node.toml: defaults, the shipped example, and a precise error for every mistake."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from veil.node.config import default_config_text, load_config
from veil.sandbox import Limits
from veil.node.errors import ConfigError
from veil.node.jobs import ApprovalRule, Quota

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MINIMAL = '[node]\nname = "bank-a"\n'


def load(tmp_path: Path, text: str):
    (tmp_path / "node.toml").write_text(text, encoding="utf-8")
    return load_config(tmp_path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "node.toml") in message  # every error names the file
    return message


# ------------------------------------------------------------------ good files


def test_minimal_file_gets_safe_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.name == "bank-a"
    assert (config.host, config.port) == ("127.0.0.1", 7400)
    assert config.limits == Limits()
    assert config.policy.min_group_size == 10
    assert config.policy.allow_min_max is False
    assert config.policy.approval == ()
    assert config.policy.max_quota is None
    assert (config.policy.min_intersection_size, config.policy.min_peer_set_size) == (10, 100)
    assert config.tariff.currency == "CNY"
    assert config.tariff.prices == {}


def test_default_config_text_is_documented_and_loads(tmp_path: Path) -> None:
    text = default_config_text("bank-b", "0.0.0.0:0")
    for option in (
        "memory_limit_mb",
        "min_group_size",
        "min_intersection_size",
        "min_peer_set_size",
        "deny_columns",
        "masked_columns",
        "max_quota",
        "min_level",
        "currency",
        "rows_scanned",
    ):
        line = next(line for line in text.splitlines() if option in line)
        assert "#" in line or line.lstrip().startswith("#"), option  # documented inline
    config = load(tmp_path, text)
    assert (config.name, config.host, config.port) == ("bank-b", "0.0.0.0", 0)
    assert config.limits == Limits()
    assert config.policy.approval == (
        ApprovalRule(frozenset({"operator"})),
        ApprovalRule(frozenset({"operator", "subject-representative"}), "sensitive"),
    )
    assert set(config.tariff.prices.values()) == {Decimal(0)}


@pytest.mark.parametrize("name", ["", "bad name", "-x", "a" * 64, 'x"y'])
def test_default_config_text_refuses_bad_names(name: str) -> None:
    with pytest.raises(ConfigError, match="node name"):
        default_config_text(name)


def test_example_node_toml_loads() -> None:
    config = load_config(EXAMPLES)
    assert config.name == "bank-a"
    policy = config.policy
    assert policy.deny_analysts == {"mallory"}
    assert policy.is_column_denied("customers", "national_id") == "*.national_id"
    assert policy.is_column_denied("customers", "amount") is None
    assert policy.masked_columns_for("customers") == {"phone": "phone"}
    assert policy.max_quota == Quota(runs=1000, rows_scanned=100_000_000, items=10_000_000)
    assert config.tariff.prices["rows_scanned"] == Decimal("0.000001")
    assert config.tariff.prices["runs"] == Decimal("1.00")
    assert (policy.min_intersection_size, policy.min_peer_set_size) == (10, 100)


def test_psi_minimums_round_trip(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "[policy]\nmin_intersection_size = 1\n"
                                      "min_peer_set_size = 5000\n")
    assert (config.policy.min_intersection_size, config.policy.min_peer_set_size) == (1, 5000)
    # the template documents what each defends against, and its values load as the defaults
    text = default_config_text("bank-b")
    assert "can be enumerated" in text
    for option in ("min_intersection_size", "min_peer_set_size"):
        line = next(line for line in text.splitlines() if line.startswith(option))
        assert "#" in line and "(>= 1)" in text
    template = load(tmp_path, text).policy
    assert (template.min_intersection_size, template.min_peer_set_size) == (10, 100)


@pytest.mark.parametrize("field", ["min_intersection_size", "min_peer_set_size"])
@pytest.mark.parametrize(
    ("value", "found"), [("0", "got integer 0"), ("-3", "got integer -3"), ("true", "got boolean True"),
                         ("'10'", "got string '10'"), ("2.5", "got float 2.5")])
def test_psi_minimum_refused(tmp_path: Path, field: str, value: str, found: str) -> None:
    message = error(tmp_path, MINIMAL + f"[policy]\n{field} = {value}\n")
    assert f"policy.{field}: expected an integer of at least 1, {found}" in message


def test_psi_minimum_typo_is_caught(tmp_path: Path) -> None:
    message = error(tmp_path, MINIMAL + "[policy]\nmin_peer_set = 100\n")
    assert "policy.min_peer_set: unknown" in message and "did you mean 'min_peer_set_size'?" in message


def test_ipv6_listen(tmp_path: Path) -> None:
    config = load(tmp_path, '[node]\nname = "n"\nlisten = "[::1]:7401"\n')
    assert (config.host, config.port) == ("[::1]", 7401)


# --------------------------------------------------------------------- errors


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="veil node init"):
        load_config(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, "[node\nname = 1")


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('[node]\nname = "a"\nnmae = "x"', "node.nmae", "'name'"),
        (MINIMAL + "[limits]\nthreds = 2", "limits.threds", "'threads'"),
        (MINIMAL + "[policy]\ndeny_colums = []", "policy.deny_colums", "'deny_columns'"),
        (MINIMAL + "[policy]\nmax_quota = { runs = 1, rows = 5 }", "policy.max_quota.rows", None),
        (
            MINIMAL + "[[policy.approval]]\nroles = ['operator']\nmin_levle = 'sensitive'",
            "policy.approval[0].min_levle",
            "'min_level'",
        ),
        (MINIMAL + "[tariff]\ncurrancy = 'CNY'", "tariff.currancy", "'currency'"),
        (
            MINIMAL + "[tariff.prices]\nrow_scanned = '1'",
            "tariff.prices.row_scanned",
            "'rows_scanned'",
        ),
        (MINIMAL + "[polcy]\nmin_group_size = 5", "polcy", "[policy]"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str, hint: str | None) -> None:
    message = error(tmp_path, text + "\n")
    assert f"{key}: unknown" in message
    if hint:
        assert f"did you mean {hint}?" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.001", "the float 0.001"),  # a TOML float
        ("1", "integer 1"),
        ('"-1"', "non-negative decimal string"),
        ('"1e-3"', "non-negative decimal string"),
        ('"NaN"', "non-negative decimal string"),
        ('"abc"', "non-negative decimal string"),
    ],
)
def test_bad_price(tmp_path: Path, value: str, expected: str) -> None:
    message = error(tmp_path, MINIMAL + f"[tariff.prices]\nrows_scanned = {value}\n")
    assert "tariff.prices.rows_scanned:" in message and expected in message


def test_float_price_error_says_why(tmp_path: Path) -> None:
    message = error(tmp_path, MINIMAL + "[tariff.prices]\nruns = 0.1\n")
    assert "cannot hold most decimal prices exactly" in message and "quote it" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[[policy.approval]]\nroles = ['operator']\nmin_level = 'secret'",
            (
                "policy.approval[0].min_level: expected one of public, internal, sensitive, core, "
                "got 'secret'"
            ),
        ),
        ("[[policy.approval]]\nroles = ['operator']\nmin_level = 'core'", "never apply"),
        ("[[policy.approval]]\nroles = []", "at least one role"),
        ("[[policy.approval]]\nmin_level = 'sensitive'", "policy.approval[0].roles: required"),
        ("[[policy.approval]]\nroles = ['Operator']", "role names"),
        ("[[policy.approval]]\nroles = ['operator']\nkinds = ['join']", "policy.approval[0].kinds"),
        (
            "[policy]\nmin_group_size = 1",
            "policy.min_group_size: expected an integer of at least 2",
        ),
        ("[policy]\nmin_group_size = true", "got boolean True"),
        ("[policy]\nallow_min_max = 'yes'", "policy.allow_min_max: expected true or false"),
        ("[policy]\nallow_kinds = ['sql']", "policy.allow_kinds"),
        ("[policy]\ndeny_columns = ['amount']", '"dataset.column"'),
        ("[policy]\ndeny_analysts = 'eve'", "expected a list"),
        (
            "[policy]\nmasked_columns = { 'customers.phone' = 'hash' }",
            "expected one of phone, email, id_number",
        ),
        ("[policy]\nmasked_columns = { 'phone' = 'phone' }", '"dataset.column"'),
        ("[policy]\nmax_quota = { runs = -1 }", "policy.max_quota.runs"),
        ("[policy]\nmax_quota = { items = 1.5 }", "policy.max_quota.items"),
        ("[limits]\ntimeout_s = 0", "limits.timeout_s: expected an integer of at least 1"),
        ("[limits]\nthreads = '2'", "limits.threads"),
        ("[tariff]\ncurrency = 'yuan'", "tariff.currency: expected a 3-letter ISO 4217 code"),
        ("[tariff]\nprices = 5", "tariff.prices: expected a table"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, MINIMAL + text + "\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "node: required"),
        ("[node]\nlisten = '127.0.0.1:1'\n", "node.name: required"),
        ("[node]\nname = 'bank a'\n", "node.name"),
        ("[node]\nname = 'a'\nlisten = '127.0.0.1'\n", "node.listen: expected host:port"),
        ("[node]\nname = 'a'\nlisten = 'localhost:70000'\n", "node.listen"),
        ("node = 'a'\n", "node: expected a table"),
    ],
)
def test_node_section_errors(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, text)


def test_every_mask_the_sandbox_applies_can_be_configured(tmp_path: Path) -> None:
    """The policy's list of masks is the sandbox's: a mask the sandbox applies (id_number)
    was refused by node.toml because the policy kept a shorter copy of the list."""
    from veil import sandbox

    for kind in sandbox.MASK_KINDS:
        config = load(tmp_path, MINIMAL + f"[policy]\nmasked_columns = {{ 'customers.x' = '{kind}' }}")
        assert config.policy.masked_columns_for("customers") == {"x": kind}
