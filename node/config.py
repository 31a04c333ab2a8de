"""node.toml: a node's name, address, sandbox limits, policy and tariff.

:func:`load_config` reads and validates ``<node_dir>/node.toml`` into a frozen
:class:`NodeConfig`. Every error names the file, the key, what was expected and what was
found. Unknown keys are errors: a typo (``deny_colums``) must never silently switch a
control off. Prices are decimal *strings* (``"0.001"``), never TOML floats.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from veil.node.errors import ConfigError, InvalidInput
from veil.sandbox import Limits
from veil.node.jobs import (
    KINDS,
    LEVELS,
    MASKS,
    METER_NAMES,
    QUOTA_METERS,
    ApprovalRule,
    BudgetRule,
    DpPolicy,
    NodePolicy,
    Quota,
    Tariff,
)
from veil.node.jobs._approval import ROLE
from veil.node.jobs._spec import IDENTIFIER, NODE_NAME

CONFIG_FILE = "node.toml"
DEFAULT_LISTEN = "127.0.0.1:7400"

_PRICE = re.compile(r"\d+(\.\d+)?")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!-]+")
_CURRENCY = re.compile(r"[A-Z]{3}")


DEFAULT_WORKERS = 2  # sandbox worker processes: queries that run at once
_LIMITS = tuple(f.name for f in dataclasses.fields(Limits))  # the [limits] keys, but workers


@dataclass(frozen=True)
class NodeConfig:
    path: Path  # the node.toml it was read from
    name: str
    listen: str
    limits: Limits  # every query's; ``[limits]`` in node.toml
    workers: int  # sandbox worker processes (``[limits] workers``)
    policy: NodePolicy
    tariff: Tariff

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:7400"`` → ``("127.0.0.1", 7400)``; ``"[::1]:0"`` → ``("[::1]", 0)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or int(port) > 65535:
        raise ValueError(listen)
    return host, int(port)


# ------------------------------------------------------------------ validation


class _Reader:
    """Typed access to a parsed TOML document with errors that name file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def table(self, doc: Mapping[str, Any], key: str, allowed: Sequence[str]) -> dict[str, Any]:
        """The table at ``key`` (empty when absent), refusing keys not in ``allowed``."""
        name = key.rpartition(".")[2]
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_describe(value)}")
        for k in value:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    f"{key}.{k}",
                    f"unknown key (allowed in [{key}]: {', '.join(allowed)}){hint}",
                )
        return value

    def array_of_tables(self, doc: Mapping[str, Any], key: str,
                        allowed: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """The ``[[key]]`` tables at ``key`` (none when absent) with their names for
        messages (``policy.approval[0]``), refusing keys not in ``allowed``."""
        entries = doc.get(key.rpartition(".")[2], [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error(key, f"expected [[{key}]] tables")
        out = []
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            for k in entry:
                if k not in allowed:
                    close = difflib.get_close_matches(k, allowed, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise self.error(f"{where}.{k}",
                                     f"unknown key (allowed: {', '.join(allowed)}){hint}")
            out.append((where, entry))
        return out

    def integer(self, table: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
        value = table.get(key.rpartition(".")[2], default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(
                key, f"expected an integer of at least {minimum}, got {_describe(value)}"
            )
        return value

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key.rpartition(".")[2], default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_describe(value)}")
        return value

    def string(self, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        name = key.rpartition(".")[2]
        if name not in table and default is None:
            raise self.error(key, "required")
        value = table.get(name, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_describe(value)}")
        return value

    def strings(
        self,
        table: Mapping[str, Any],
        key: str,
        pattern: re.Pattern[str],
        expected: str,
        default: Sequence[str] = (),
    ) -> list[str]:
        value = table.get(key.rpartition(".")[2], list(default))
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of {expected}, got {_describe(value)}")
        for item in value:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.error(key, f"expected {expected}, got {_describe(item)}")
        return value


def _describe(value: object) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "list",
        dict: "table",
    }.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def _choice(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(w) for w in words))


# ---------------------------------------------------------------------- loading


def load_config(node_dir: Path) -> NodeConfig:
    """Read and validate ``node_dir/node.toml``; raise :class:`ConfigError` on any problem."""
    path = Path(node_dir) / CONFIG_FILE
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; create it with `veil node init {node_dir}`") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(doc, path)


def parse_config(doc: Mapping[str, Any], path: Path) -> NodeConfig:
    """Validate an already-parsed node.toml document (``path`` is used in messages)."""
    r = _Reader(path)
    for key in doc:
        if key not in ("node", "limits", "policy", "tariff"):
            close = difflib.get_close_matches(key, ["node", "limits", "policy", "tariff"], n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise r.error(key, f"unknown section (sections: node, limits, policy, tariff){hint}")
    if "node" not in doc:
        raise r.error("node", 'required: a [node] table with at least name = "..."')
    node = r.table(doc, "node", ("name", "listen"))
    name = r.string(node, "node.name")
    if not NODE_NAME.fullmatch(name):
        raise r.error(
            "node.name", f"expected letters, digits, '.', '_', '-' (at most 63), got {name!r}"
        )
    listen = r.string(node, "node.listen", DEFAULT_LISTEN)
    try:
        split_listen(listen)
    except ValueError:
        raise r.error(
            "node.listen",
            f"expected host:port with port 0-65535 (0 = any free port), got {listen!r}",
        ) from None
    limits = r.table(doc, "limits", (*_LIMITS, "workers"))
    return NodeConfig(
        path=path,
        name=name,
        listen=listen,
        limits=_limits(r, limits),
        workers=r.integer(limits, "limits.workers", DEFAULT_WORKERS, 1),
        policy=_policy(r, doc),
        tariff=_tariff(r, doc),
    )


def _limits(r: _Reader, table: Mapping[str, Any]) -> Limits:
    defaults = Limits()
    return Limits(
        **{
            name: r.integer(table, f"limits.{name}", int(getattr(defaults, name)),
                            Limits.MINIMUMS.get(name, 1))
            for name in _LIMITS
        }
    )


_POLICY_KEYS = (
    "min_group_size",
    "min_intersection_size",
    "min_peer_set_size",
    "allow_min_max",
    "allow_kinds",
    "deny_analysts",
    "deny_columns",
    "deny_functions",
    "masked_columns",
    "max_quota",
    "approval",
    "dp",
)
_RULE_KEYS = ("roles", "min_level", "kinds", "datasets")


def _policy(r: _Reader, doc: Mapping[str, Any]) -> NodePolicy:
    p = r.table(doc, "policy", _POLICY_KEYS)
    kinds = _choice(KINDS)
    allow_kinds = r.strings(p, "policy.allow_kinds", kinds, f"one of {', '.join(KINDS)}", KINDS)
    deny_analysts = r.strings(p, "policy.deny_analysts", re.compile(r"\S(.*\S)?"), "analyst names")
    deny_columns = r.strings(
        p,
        "policy.deny_columns",
        re.compile(f"{_GLOB.pattern}\\.{_GLOB.pattern}"),
        '"dataset.column" (globs * ? allowed)',
    )
    deny_functions = r.strings(p, "policy.deny_functions", IDENTIFIER, "SQL function names")
    masked = p.get("masked_columns", {})
    if not isinstance(masked, dict):
        raise r.error("policy.masked_columns", f"expected a table, got {_describe(masked)}")
    qualified = re.compile(f"{IDENTIFIER.pattern}\\.{IDENTIFIER.pattern}")
    for key, mask in masked.items():
        where = f'policy.masked_columns."{key}"'
        if not qualified.fullmatch(key):
            raise r.error(where, 'expected keys of the form "dataset.column"')
        if mask not in MASKS:
            raise r.error(where, f"expected one of {', '.join(MASKS)}, got {_describe(mask)}")
    return NodePolicy(
        min_group_size=r.integer(p, "policy.min_group_size", 10, 2),
        min_intersection_size=r.integer(p, "policy.min_intersection_size",
                                        NodePolicy.min_intersection_size, 1),
        min_peer_set_size=r.integer(p, "policy.min_peer_set_size",
                                    NodePolicy.min_peer_set_size, 1),
        allow_min_max=r.boolean(p, "policy.allow_min_max", False),
        allow_kinds=frozenset(allow_kinds),
        deny_analysts=frozenset(deny_analysts),
        deny_columns=tuple(deny_columns),
        deny_functions=frozenset(f.lower() for f in deny_functions),
        masked_columns=dict(masked),
        max_quota=_max_quota(r, p),
        approval=_rules(r, p),
        dp=_dp_policy(r, p),
    )


_DP_KEYS = ("require_datasets", "require_min_level", "require_kinds", "budget")
_BUDGET_KEYS = ("datasets", "analysts", "epsilon", "delta", "rho", "max_per_run", "renew",
                "shared")


def _dp_policy(r: _Reader, p: Mapping[str, Any]) -> DpPolicy:
    """``[policy.dp]`` and its ``[[policy.dp.budget]]`` rules."""
    t = r.table(p, "policy.dp", _DP_KEYS)
    require = r.strings(t, "policy.dp.require_datasets", _GLOB, "dataset names or globs")
    level = t.get("require_min_level")
    if level is not None and level not in LEVELS[:-1]:
        raise r.error("policy.dp.require_min_level",
                      f"expected one of {', '.join(LEVELS[:-1])}, got {_describe(level)}")
    budgets = []
    for key, entry in r.array_of_tables(t, "policy.dp.budget", _BUDGET_KEYS):
        try:
            budgets.append(_budget(r, entry, key))
        except InvalidInput as exc:
            raise r.error(key, str(exc)) from None
    from veil.node.jobs import DP_KINDS

    kinds = r.strings(t, "policy.dp.require_kinds", _choice(DP_KINDS),
                      f"one of {', '.join(DP_KINDS)}", DP_KINDS)
    return DpPolicy(tuple(require), level, tuple(budgets), tuple(kinds))


def _budget(r: _Reader, entry: Mapping[str, Any], key: str) -> BudgetRule:
    from veil.node.jobs import _dp

    if ("epsilon" in entry) == ("rho" in entry):
        raise r.error(key, "state the budget as epsilon = \"3\" (pure DP), rho = \"1\" (zCDP) "
                           "or epsilon with delta, one of them")
    approx = None
    if "rho" in entry:
        if "delta" in entry:
            raise r.error(f"{key}.delta", "goes with epsilon, not rho")
        measure, total = "rho", _dp.decimal(entry["rho"], f"{key}.rho")
    elif "delta" in entry:
        from veil.protocols import dp

        eps = _dp.decimal(entry["epsilon"], f"{key}.epsilon")
        delta = _dp.decimal(entry["delta"], f"{key}.delta", places=30)
        if eps <= 0 or not 0 < delta < 1:
            raise r.error(key, "expected epsilon > 0 and 0 < delta < 1")
        measure, total, approx = "rho", dp.rho_for(eps, delta), (eps, delta)
    else:
        measure, total = "epsilon", _dp.decimal(entry["epsilon"], f"{key}.epsilon")
    if total <= 0:
        raise r.error(key, "the budget must be more than 0")
    if "max_per_run" not in entry:
        raise r.error(f"{key}.max_per_run",
                      "required: the most one run may spend (in the budget's measure)")
    per_run = _dp.decimal(entry["max_per_run"], f"{key}.max_per_run")
    renew = _dp.parse_renew(entry["renew"], f"{key}.renew") if "renew" in entry else None
    return BudgetRule(
        measure=measure, total=total, max_per_run=per_run, renew_s=renew,
        datasets=tuple(r.strings(entry, f"{key}.datasets", _GLOB, "dataset names or globs",
                                 ["*"])),
        analysts=tuple(r.strings(entry, f"{key}.analysts", re.compile(r"\S(.*\S)?"),
                                 "analyst names or globs", ["*"])),
        approx=approx,
        shared=r.boolean(entry, f"{key}.shared", False),
    )


def _max_quota(r: _Reader, p: Mapping[str, Any]) -> Quota | None:
    if "max_quota" not in p:
        return None
    table = r.table(p, "policy.max_quota", QUOTA_METERS)
    values = {
        m: r.integer(table, f"policy.max_quota.{m}", 0, 1 if m == "runs" else 0) for m in table
    }
    return Quota(**values)


def _rules(r: _Reader, p: Mapping[str, Any]) -> tuple[ApprovalRule, ...]:
    rules = []
    for key, entry in r.array_of_tables(p, "policy.approval", _RULE_KEYS):
        if "roles" not in entry:
            raise r.error(f"{key}.roles", "required: the roles whose approval the rule adds")
        roles = r.strings(entry, f"{key}.roles", ROLE, 'role names like "operator"')
        if not roles:
            raise r.error(f"{key}.roles", "expected at least one role")
        min_level = r.string(entry, f"{key}.min_level", "public")
        if min_level not in LEVELS:
            raise r.error(
                f"{key}.min_level", f"expected one of {', '.join(LEVELS)}, got {min_level!r}"
            )
        if min_level == "core":
            raise r.error(
                f"{key}.min_level",
                "core columns never take part in jobs, so this rule would never apply; "
                "use sensitive",
            )
        kinds = r.strings(
            entry, f"{key}.kinds", _choice(KINDS), f"one of {', '.join(KINDS)}", KINDS
        )
        datasets = r.strings(entry, f"{key}.datasets", _GLOB, "dataset names or globs", ["*"])
        if not kinds or not datasets:
            raise r.error(key, "kinds and datasets, when given, must not be empty lists")
        try:
            rules.append(
                ApprovalRule(frozenset(roles), min_level, frozenset(kinds), tuple(datasets))
            )
        except InvalidInput as exc:  # backstop: the checks above should have caught it
            raise r.error(key, str(exc)) from None
    return tuple(rules)


def _tariff(r: _Reader, doc: Mapping[str, Any]) -> Tariff:
    t = r.table(doc, "tariff", ("currency", "prices"))
    currency = r.string(t, "tariff.currency", "CNY")
    if not _CURRENCY.fullmatch(currency):
        raise r.error(
            "tariff.currency", f'expected a 3-letter ISO 4217 code like "CNY", got {currency!r}'
        )
    prices_table = r.table(t, "tariff.prices", METER_NAMES)
    prices = {}
    for meter, value in prices_table.items():
        key = f"tariff.prices.{meter}"
        if isinstance(value, float):
            raise r.error(
                key,
                f'expected a decimal string like "{value}", got the float {value}: TOML '
                "floats are binary and cannot hold most decimal prices exactly; quote it",
            )
        if not isinstance(value, str) or not _PRICE.fullmatch(value):
            raise r.error(
                key,
                f'expected a non-negative decimal string like "0.001", got {_describe(value)}',
            )
        prices[meter] = Decimal(value)
    return Tariff(currency, prices)


# ------------------------------------------------------------------ node init


def default_config_text(name: str, listen: str = DEFAULT_LISTEN) -> str:
    """The commented node.toml that ``veil node init`` writes; it loads as the defaults
    plus a two-sided approval rule for sensitive columns."""
    if not NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"node name: expected letters, digits, '.', '_', '-' (at most 63), got {name!r}"
        )
    try:
        split_listen(listen)
    except ValueError:
        raise ConfigError(f"listen: expected host:port with port 0-65535, got {listen!r}") from None
    return _TEMPLATE.format(
        name=name, listen=listen, levels=", ".join(LEVELS), meters=", ".join(METER_NAMES)
    )


_TEMPLATE = """\
# node.toml: configuration of one Veil node. Unknown keys are errors, so a typo
# can never silently switch a control off. Edit, then restart `veil node serve`.

[node]
name = "{name}"                  # this node's name in the federation (matches its certificate)
listen = "{listen}"          # host:port to serve gRPC (mTLS) on; port 0 = pick a free one

[limits]                          # sandbox limits applied to every query
memory_limit_mb = 1024            # memory a single query may use
threads = 2                       # engine threads per query
timeout_s = 30                    # wall-clock seconds before a query is cancelled
max_result_rows = 10000           # rows a query may return (after suppression)
max_sql_bytes = 100000            # longest SQL text accepted
max_result_bytes = 1000000        # serialized result a query may return (the wire carries ~2x)
workers = 2                       # sandbox worker processes, i.e. queries running at once; each
                                  # may use memory_limit_mb + 512 MB, then it is stopped

[policy]
min_group_size = 10               # smallest group of subjects an aggregate may describe (>= 2);
                                  # smaller groups are suppressed and only counted
allow_min_max = false             # MIN/MAX reveal one subject's value: off unless you need them
# PSI (psi, intersection_sum): keys such as phone numbers can be enumerated, so a peer with a
# tiny or crafted set would learn whether specific people are customers here. These minimums,
# and the job's quota on items, bound what any run can single out:
min_intersection_size = 10        # a run whose intersection has fewer keys releases nothing
                                  # (a small match count points at individuals; >= 1)
min_peer_set_size = 100           # the peer's set must have at least this many keys: a handful
                                  # of guessed numbers cannot test membership one by one (>= 1)
allow_kinds = ["sum", "psi", "intersection_sum", "query"]   # job kinds this node runs
deny_analysts = []                # analyst names refused on every call, e.g. ["mallory"]
deny_columns = []                 # negative list of "dataset.column" (globs * ? allowed),
                                  # e.g. ["customers.phone", "*.national_id"]
deny_functions = []               # SQL functions refused in queries, e.g. ["regexp_matches"]
masked_columns = {{}}               # "dataset.column" = "phone" | "email": values masked in queries
# max_quota = {{ runs = 1000, rows_scanned = 100000000, items = 10000000 }}
                                  # optional caps on any job's quota (runs, rows_scanned, items);
                                  # a job asking for more is refused, an unset meter is capped

# Differential privacy (optional). Give analysts a budget per dataset; a query or sum job with
# a [dp] table then releases noisy figures and spends from it, and the budget is enforced in
# the log. Make DP compulsory by dataset or by the level of the columns a job touches:
# [policy.dp]
# require_min_level = "sensitive"   # every query and sum touching a sensitive column
# require_datasets = ["customers"]  # every query and sum on these datasets (globs)
# require_kinds = ["query"]         # the kinds required to (default: query and sum)
# [[policy.dp.budget]]
# datasets = ["*"]                  # globs; the first matching rule applies
# analysts = ["*"]                  # globs; each analyst has a budget of their own
# epsilon = "3"                     # or rho = "1" (zCDP), or epsilon with delta = "1e-6"
# max_per_run = "1"                 # the most one run may spend
# renew = "30d"                     # d, h, m or s; omit for a budget that never renews
# shared = false                    # true: one budget for all matching analysts together

# Approval rules. Column levels: {levels} (core columns are never used).
# Every job needs the operator's approval; each rule that matches a job adds its roles.
# A rule matches when the job's kind is in `kinds` (default: all), this node's dataset
# matches one of `datasets` (globs, default ["*"]) and the job touches a column at
# `min_level` or above (default "public": every job).
[[policy.approval]]
roles = ["operator"]

[[policy.approval]]               # two-sided authorization for sensitive data
roles = ["operator", "subject-representative"]
min_level = "sensitive"
# kinds = ["query", "sum", "psi", "intersection_sum"]
# datasets = ["*"]

[tariff]
currency = "CNY"                  # ISO 4217 code

[tariff.prices]                   # price per unit, as exact decimal strings (never floats);
                                  # unlisted meters are free. Meters: {meters}.
                                  # Lines are exact; a statement's total is rounded to 0.01.
runs = "0"
rows_scanned = "0"
result_rows = "0"
items = "0"
ciphertexts = "0"
cpu_ms = "0"
bytes_out = "0"
"""
