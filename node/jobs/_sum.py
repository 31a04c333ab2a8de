"""The parameters of a ``sum`` job: what is totalled, over which groups, under whose key.

A sum job totals one or more columns across every node it names, optionally per category of
one public column, and releases the totals only to the analyst, encrypted under the analyst's
Paillier key, which is part of the signed job so that every approval binds it::

    [params]
    aggregator = "bank-a"          # the node that collects the encrypted parts (one of [[nodes]])
    columns = ["exposure"]         # the columns summed, 1 to 16 (COUNT(*) comes with them)
    group_by = "industry"          # optional: a column of every node's dataset ...
    categories = ["energy", "retail"]   # ... and its categories, declared (up to 100,000)
    where = "year = 2025"          # optional filter; the node's sandbox rules apply to it
    scale = 2                      # decimal digits kept (0-12): 12.345 is summed as 12.35
    bound = "1000000000"           # the largest |sum| any one node may contribute per group
    paillier_n = "..."             # the analyst's Paillier modulus (or paillier_key = FILE)

The categories are declared, not discovered: the set of groups a node holds would otherwise
leak through the result's shape. ``bound`` sizes the plaintext slots so that no total can
overflow into its neighbour; a node whose own sum exceeds it refuses to contribute (before
encrypting anything). ``paillier_key`` in a job file names the analyst's public key file
(``veil keys paillier``), read when the job is built; the signed job holds the modulus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from veil.node.errors import InvalidInput

MAX_COLUMNS = 16
MAX_CATEGORIES = 100_000
MAX_SCALE = 12
MAX_WHERE = 10_000
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
#: params of a sum job, in the order messages list them
KEYS = ("aggregator", "columns", "group_by", "categories", "where", "scale", "bound",
        "paillier_n")
REQUIRED = ("aggregator", "columns", "bound", "paillier_n")


@dataclass(frozen=True)
class SumParams:
    """A sum job's parameters, typed (the job's ``params`` hold their canonical JSON form)."""

    aggregator: str
    columns: tuple[str, ...]
    group_by: str | None
    categories: tuple[str, ...]  # () without group_by: one global group
    where: str | None
    scale: int
    bound: Decimal
    paillier_n: int

    @property
    def groups(self) -> int:
        return max(1, len(self.categories))

    @property
    def used_columns(self) -> tuple[str, ...]:
        return (*self.columns, *((self.group_by,) if self.group_by else ()))


def check(params: Mapping[str, Any], node_names: Sequence[str]) -> dict[str, Any]:
    """Validate a sum job's params; return their canonical form (defaults filled in)."""
    from veil.node.jobs._spec import check_identifier, check_node_name, check_text

    unknown = sorted(set(params) - set(KEYS))
    if unknown:
        raise InvalidInput(
            f"params of a sum job: unknown key {unknown[0]!r} (allowed: {', '.join(KEYS)})"
        )
    for name in REQUIRED:
        if name not in params:
            raise InvalidInput(f"params.{name}: required for a sum job{_HINTS[name]}")
    out: dict[str, Any] = {}
    aggregator = check_node_name(params["aggregator"], "params.aggregator")
    if aggregator not in node_names:
        raise InvalidInput(
            f"params.aggregator: {aggregator!r} is not one of the job's nodes "
            f"({', '.join(node_names)})"
        )
    out["aggregator"] = aggregator
    columns = _names(params["columns"], "params.columns", 1, MAX_COLUMNS, check_identifier)
    out["columns"] = columns
    if "group_by" in params:
        group_by = check_identifier(params["group_by"], "params.group_by")
        if group_by in columns:
            raise InvalidInput(f"params.group_by: {group_by!r} is also a summed column")
        if "categories" not in params:
            raise InvalidInput("params.categories: required with group_by: declare every "
                               "category (the set of groups must not depend on the data)")
        out["group_by"] = group_by
        out["categories"] = _names(
            params["categories"], "params.categories", 1, MAX_CATEGORIES,
            lambda v, w: check_text(v, w, max_len=200))
    elif "categories" in params:
        raise InvalidInput("params.categories: only with group_by (the column they are of)")
    slots = len(columns) * max(1, len(out.get("categories", ())))
    if slots > 1_000_000:
        raise InvalidInput(
            f"params: {len(columns)} columns × {len(out['categories'])} categories is "
            f"{slots:,} totals; at most 1,000,000"
        )
    if "where" in params:
        out["where"] = check_text(params["where"], "params.where", max_len=MAX_WHERE).strip()
    scale = params.get("scale", 0)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise InvalidInput(f"params.scale: expected an integer 0-{MAX_SCALE} (decimal digits "
                           f"kept), got {scale!r}")
    out["scale"] = scale
    out["bound"] = str(_bound(params["bound"], scale))
    out["paillier_n"] = str(check_modulus(params["paillier_n"], "params.paillier_n"))
    return out


def parse(params: Mapping[str, Any]) -> SumParams:
    """The typed view of already-checked params (from :func:`check` or a verified job)."""
    return SumParams(
        aggregator=params["aggregator"],
        columns=tuple(params["columns"]),
        group_by=params.get("group_by"),
        categories=tuple(params.get("categories", ())),
        where=params.get("where"),
        scale=int(params["scale"]),
        bound=Decimal(params["bound"]),
        paillier_n=int(params["paillier_n"]),
    )


def check_modulus(value: object, where: str) -> int:
    """A plausible Paillier modulus: an odd composite of MIN_KEY_BITS to MAX_KEY_BITS bits,
    not a perfect square, with no small factor. (Whether it is a product of two primes of
    equal size only its owner can know; a bad one hurts only the analyst who made it.)"""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            n = int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            raise InvalidInput(f"{where}: expected the modulus as decimal digits or 0x-hex, "
                               f"got {value[:40]!r}") from None
    else:
        raise InvalidInput(f"{where}: expected the Paillier modulus n, got {type(value).__name__}")
    bits = n.bit_length()
    if not MIN_KEY_BITS <= bits <= MAX_KEY_BITS:
        raise InvalidInput(
            f"{where}: the key is {bits} bits; a Paillier key must have {MIN_KEY_BITS} to "
            f"{MAX_KEY_BITS} bits (make one with `veil keys paillier`)"
        )
    if n % 2 == 0 or math.isqrt(n) ** 2 == n or any(n % p == 0 for p in _SMALL_PRIMES):
        raise InvalidInput(f"{where}: not a valid Paillier modulus (even, a square or with a "
                           "small factor); make a key with `veil keys paillier`")
    return n


def read_public_key(path: Path) -> int:
    """The modulus from a public key file written by ``veil keys paillier``."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"paillier_key: no such file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"paillier_key: {path} is not a Paillier public key file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "paillier-public-key" or "n" not in doc:
        raise InvalidInput(f"paillier_key: {path} is not a Paillier public key file "
                           "(expected one written by `veil keys paillier`)")
    return check_modulus(doc["n"], f"paillier_key {path}")


def _names(value: object, where: str, low: int, high: int, check_one: Any) -> list[str]:
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise InvalidInput(f"{where}: expected a list of {low} to {high:,} names, got "
                           f"{len(value) if isinstance(value, list) else type(value).__name__}")
    names = [check_one(v, where) for v in value]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"{where}: {name!r} is listed twice")
        seen.add(name)
    return names


def _bound(value: object, scale: int) -> Decimal:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise InvalidInput(f"params.bound: expected a decimal string like \"1000000\", got "
                           f"{type(value).__name__}")
    try:
        bound = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidInput(f"params.bound: expected a decimal number, got {text[:40]!r}") from None
    if not bound.is_finite() or bound <= 0 or bound > Decimal(10) ** 30:
        raise InvalidInput(f"params.bound: expected a number above 0 and at most 1e30, got {text!r}")
    if bound != bound.quantize(Decimal(1).scaleb(-scale)):
        raise InvalidInput(f"params.bound: {text} has more decimal digits than scale = {scale}")
    return bound.quantize(Decimal(1).scaleb(-scale)) if scale else bound.quantize(Decimal(1))


_SMALL_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73,
                 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157)
_HINTS = {
    "aggregator": ": the name of the node that collects the encrypted parts",
    "columns": ': the columns to total, e.g. columns = ["amount"]',
    "bound": ': the largest |sum| one node may contribute per group, e.g. bound = "1000000"',
    "paillier_n": ": your Paillier public key (paillier_key = \"FILE\" from `veil keys paillier`)",
}


# --------------------------------------------------------------------------- the packed form

#: counts and withheld flags share one packing: a node's row count per group is below this
MAX_ROWS = 1 << 40


def packings(p: SumParams, nodes: int, noisy: bool = False) -> tuple[Any, Any, Any]:
    """The three packings of a run, as every party computes them from the job: the sums
    (``[-bound, bound]`` at ``scale`` digits), the row counts, and the withheld flags. Under
    differential privacy (``noisy``) a node's row counts carry noise and may be negative."""
    from fractions import Fraction

    from phe.paillier import PaillierPublicKey

    from veil.protocols.packing import Packing

    key = PaillierPublicKey(p.paillier_n)
    sums = Packing.for_key(key, lower=-Fraction(p.bound), upper=Fraction(p.bound),
                           digits=p.scale, addends=nodes)
    counts = Packing.for_key(key, lower=-MAX_ROWS if noisy else 0, upper=MAX_ROWS, digits=0,
                             addends=nodes)
    flags = Packing.for_key(key, lower=0, upper=1, digits=0, addends=nodes)
    return sums, counts, flags


@dataclass(frozen=True)
class SumTotals:
    """A run's decrypted totals. ``totals[column][g]`` is the sum over the nodes that
    contributed group ``g`` (exact ``Decimal``s), ``counts[g]`` their rows, ``withheld[g]``
    how many nodes withheld it (below their minimum group size, or no rows there)."""

    run_id: str
    groups: tuple[str, ...]  # the declared categories, or ("total",)
    totals: Mapping[str, Any]  # column -> numpy object array of Decimal
    counts: Any  # numpy int64 array
    withheld: Any  # numpy int64 array
    receipts: tuple[Mapping[str, Any], ...]  # node, log_index, checkpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "groups": list(self.groups),
            "totals": {c: [str(v) for v in a] for c, a in self.totals.items()},
            "counts": [int(v) for v in self.counts],
            "withheld": [int(v) for v in self.withheld],
            "receipts": [dict(r) for r in self.receipts],
        }


def decode(p: SumParams, nodes: int, sums: Sequence[int], counts: Sequence[int],
           flags: Sequence[int], decryptor: Any,
           noisy: bool = False) -> tuple[list[list[Decimal]], list[int], list[int]]:
    """Decrypt and unpack a run's totals: per group the column totals, rows and how many
    nodes withheld it. Every node sends every withheld flag (0 or 1); a node that withheld a
    group sends nothing (a raw zero) in its sum and count slots, so those slots are unpacked
    as sums of the nodes that did contribute."""
    sums_pack, counts_pack, flags_pack = packings(p, nodes, noisy)
    groups, width = p.groups, len(p.columns)
    withheld = flags_pack.unpack_scaled(decryptor.decrypt_many(flags), groups)
    contributed = [nodes - w for w in withheld]
    rows = counts_pack.unpack_scaled(decryptor.decrypt_many(counts), groups, contributed)
    per_slot = [contributed[g] for g in range(groups) for _ in range(width)]
    values = sums_pack.unpack_decimal(decryptor.decrypt_many(sums), groups * width, per_slot)
    totals = [values[g * width:(g + 1) * width] for g in range(groups)]
    return totals, rows, withheld
