"""The parameters of ``psi`` and ``intersection_sum`` jobs: what is matched, how, and what
comes out.

Both kinds name exactly two nodes (with addresses). They stay two kinds, so that a node's
policy (``allow_kinds``) can allow a cardinality PSI but not an intersection sum, which
reveals more::

    [params]                       # kind = "psi"
    key = "phone"                  # the key column, the same name at both nodes, OR
    # keys = { "bank-a" = "phone", "telco-b" = "msisdn" }   # one per node (exactly one of them)
    normalize = "e164"             # exact | trimmed | casefold | digits | e164 (default exact)
    output = "cardinality"         # cardinality (default) | membership
    receivers = ["bank-a"]         # membership only, required: 1 or 2 of the job's nodes
    into = "shared_customers"      # membership only, optional: the new local dataset at each
                                   # receiver (default "<its dataset>_matched")

    [params]                       # kind = "intersection_sum"
    key = "phone"                  # or keys = {...}; normalize as above
    values = ["spend", "visits"]   # 1-16 columns, all listed by exactly one node (the values node)
    scale = 2                      # decimal digits kept, 0-12 (default 0)
    bound = "1000000"              # largest |value| of one key, after its duplicates are summed
    paillier_n = "..."             # the analyst's Paillier modulus (or paillier_key = FILE)

The signed (canonical) form states everything: ``keys`` per node (``key`` is expanded),
``normalize``, and for ``psi`` the ``output``; a membership job's ``receivers`` and ``into``
per receiver (the default filled in); an intersection sum's ``scale``. Each node lists exactly
the columns the job uses there: its key column, plus the values at the values node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from veil.node.errors import InvalidInput
from veil.node.jobs._sum import MAX_COLUMNS, MAX_SCALE, _bound, _names, check_modulus
from veil.node.jobs._tariff import Meters
from veil.protocols.psi import MODES

if TYPE_CHECKING:
    from veil.node.jobs._spec import JobSpec, NodePart

#: what a ``psi`` job can output (an intersection sum is its own kind)
PSI_OUTPUTS: tuple[str, ...] = ("cardinality", "membership")
PSI_KINDS: tuple[str, ...] = ("psi", "intersection_sum")
#: params of each kind, in the order messages list them
KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "psi": ("key", "keys", "normalize", "output", "receivers", "into"),
    "intersection_sum": ("key", "keys", "normalize", "values", "scale", "bound", "paillier_n"),
})
DEFAULT_NORMALIZE = "exact"
MATCHED_SUFFIX = "_matched"


@dataclass(frozen=True)
class PsiParams:
    """A ``psi`` or ``intersection_sum`` job's parameters, typed."""

    kind: str  # "psi" | "intersection_sum"
    keys: Mapping[str, str]  # node name -> its key column (both nodes)
    normalize: str  # a veil.protocols.psi mode
    output: str  # "cardinality" | "membership" | "intersection_sum"
    receivers: tuple[str, ...] = ()  # membership receivers, () otherwise
    into: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    values: tuple[str, ...] = ()  # () for psi
    values_node: str | None = None  # intersection_sum: the node holding the values
    scale: int = 0  # 0 for psi
    bound: Decimal | None = None
    paillier_n: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "into", MappingProxyType(dict(self.into)))
        object.__setattr__(self, "receivers", tuple(self.receivers))
        object.__setattr__(self, "values", tuple(self.values))

    def key_column(self, node: str) -> str:
        """The key column of ``node`` (one of the job's two nodes)."""
        try:
            return self.keys[node]
        except KeyError:
            raise InvalidInput(
                f"the job has no key column for node {node!r} (it names: "
                f"{', '.join(self.keys)})"
            ) from None

    def peer(self, node: str) -> str:
        """The other node of the job."""
        self.key_column(node)
        return next(n for n in self.keys if n != node)

    def columns_at(self, node: str) -> tuple[str, ...]:
        """The columns the job uses at ``node``: its key, plus the values at the values node."""
        key = self.key_column(node)
        return (key, *self.values) if node == self.values_node else (key,)


def psi_params(spec_or_params: JobSpec | Mapping[str, Any], kind: str | None = None,
               ) -> PsiParams:
    """The typed view of a validated job's params: pass the :class:`JobSpec` (or its
    ``params`` and ``kind``). The params must already have been checked (every JobSpec's
    are), so this only converts."""
    from veil.node.jobs._spec import JobSpec

    if isinstance(spec_or_params, JobSpec):
        kind, params = spec_or_params.kind, spec_or_params.params
    else:
        params = spec_or_params
        if kind is None:
            kind = "intersection_sum" if "values" in params else "psi"
    if kind not in PSI_KINDS:
        raise InvalidInput(f"a {kind} job has no PSI parameters (PSI kinds: "
                           f"{', '.join(PSI_KINDS)})")
    keys = dict(params["keys"])
    if kind == "psi":
        return PsiParams(
            kind=kind, keys=keys, normalize=params["normalize"], output=params["output"],
            receivers=tuple(params.get("receivers", ())), into=dict(params.get("into", {})),
        )
    values = tuple(params["values"])
    return PsiParams(
        kind=kind, keys=keys, normalize=params["normalize"], output="intersection_sum",
        values=values, values_node=params["values_node"], scale=int(params["scale"]),
        bound=Decimal(params["bound"]), paillier_n=int(params["paillier_n"]),
    )


def run_meters(own_keys: int, peer_points: int, bytes_sent: int) -> Meters:
    """What one PSI run charges at a node: ``items`` = this node's distinct keys plus the
    peer's points this node processed; ``bytes_out`` = the bytes this node sent."""
    return Meters(runs=1, items=own_keys + peer_points, bytes_out=bytes_sent)


# ------------------------------------------------------------------------- checking


def check(kind: str, params: Mapping[str, Any], nodes: Sequence[NodePart]) -> dict[str, Any]:
    """Validate a PSI job's params against its two nodes; return their canonical form (every
    default filled in, ``key`` expanded to ``keys``)."""
    allowed = KEYS[kind]
    unknown = sorted(set(params) - set(allowed) - ({"values_node"} if kind ==
                                                    "intersection_sum" else set()))
    if unknown:
        raise InvalidInput(f"params of a {kind} job: unknown key {unknown[0]!r} (allowed: "
                           f"{', '.join(allowed)})")
    names = [n.name for n in nodes]
    out: dict[str, Any] = {"keys": _keys(params, names)}
    normalize = params.get("normalize", DEFAULT_NORMALIZE)
    if normalize not in MODES:
        raise InvalidInput(f"params.normalize: expected one of {', '.join(MODES)}, got "
                           f"{_show(normalize)}")
    out["normalize"] = normalize
    if kind == "psi":
        out.update(_outputs(params, nodes))
    else:
        out.update(_sum_params(params, nodes, out["keys"]))
    _check_columns(kind, nodes, out)
    return out


def _keys(params: Mapping[str, Any], names: list[str]) -> dict[str, str]:
    from veil.node.jobs._spec import check_identifier, check_node_name

    if ("key" in params) == ("keys" in params):
        raise InvalidInput(
            "params: give exactly one of key (the key column, the same name at both nodes) or "
            'keys (one per node, e.g. keys = { "bank-a" = "phone", "telco-b" = "msisdn" }); '
            f"got {'both' if 'key' in params else 'neither'}"
        )
    if "key" in params:
        column = check_identifier(params["key"], "params.key")
        return {name: column for name in names}
    table = params["keys"]
    if not isinstance(table, Mapping):
        raise InvalidInput(f"params.keys: expected a table of node name = key column, got "
                           f"{type(table).__name__}")
    for name in table:
        check_node_name(name, "params.keys")
    if sorted(table) != sorted(names):
        raise InvalidInput(f"params.keys: expected a key column for exactly the job's nodes "
                           f"({', '.join(names)}), got {', '.join(sorted(table)) or 'none'}")
    return {name: check_identifier(table[name], f"params.keys.{name}") for name in names}


def _outputs(params: Mapping[str, Any], nodes: Sequence[NodePart]) -> dict[str, Any]:
    from veil.node.jobs._spec import check_identifier, check_node_name

    output = params.get("output", "cardinality")
    if output not in PSI_OUTPUTS:
        raise InvalidInput(f"params.output: expected one of {', '.join(PSI_OUTPUTS)}, got "
                           f"{_show(output)} (an intersection sum is kind = \"intersection_sum\")")
    out: dict[str, Any] = {"output": output}
    if output != "membership":
        for name in ("receivers", "into"):
            if name in params:
                raise InvalidInput(f"params.{name}: only with output = \"membership\" (a "
                                   f"{output} job stores nothing at the nodes)")
        return out
    if "receivers" not in params:
        raise InvalidInput('params.receivers: required with output = "membership": the node(s) '
                           'that learn which of their rows match, e.g. receivers = ["bank-a"]')
    names = [n.name for n in nodes]
    receivers = _names(params["receivers"], "params.receivers", 1, 2, check_node_name)
    for name in receivers:
        if name not in names:
            raise InvalidInput(f"params.receivers: {name!r} is not one of the job's nodes "
                               f"({', '.join(names)})")
    receivers = [n for n in names if n in receivers]  # the job's order: one canonical form
    datasets = {n.name: n.dataset for n in nodes}
    into = params.get("into")
    if into is None:
        chosen = {r: datasets[r] + MATCHED_SUFFIX for r in receivers}
        where = "params.into (default: <dataset>_matched)"
    elif isinstance(into, str):
        chosen = {r: into for r in receivers}
        where = "params.into"
    elif isinstance(into, Mapping):
        if sorted(into) != sorted(receivers):
            raise InvalidInput(f"params.into: expected one name per receiver "
                               f"({', '.join(receivers)}), got {', '.join(sorted(into)) or 'none'}")
        chosen = {r: into[r] for r in receivers}
        where = "params.into"
    else:
        raise InvalidInput(f"params.into: expected the name of the new dataset, got "
                           f"{type(into).__name__}")
    for receiver, name in chosen.items():
        check_identifier(name, f"{where} at {receiver!r}")
        if name == datasets[receiver]:
            raise InvalidInput(f"params.into: {name!r} is the dataset the job reads at "
                               f"{receiver!r}; name a new dataset for the matched rows")
    out["receivers"] = receivers
    out["into"] = chosen
    return out


def _sum_params(params: Mapping[str, Any], nodes: Sequence[NodePart],
                keys: Mapping[str, str]) -> dict[str, Any]:
    from veil.node.jobs._spec import check_identifier

    for name, hint in _SUM_HINTS.items():
        if name not in params:
            raise InvalidInput(f"params.{name}: required for an intersection_sum job{hint}")
    values = _names(params["values"], "params.values", 1, MAX_COLUMNS, check_identifier)
    holders = [n.name for n in nodes if any(v in n.columns and v != keys[n.name] for v in values)]
    if len(holders) != 1:
        raise InvalidInput(
            f"params.values: every values column must be listed in the columns of exactly one "
            f"node (the values node); found values at "
            f"{', '.join(holders) if holders else 'no node'}"
        )
    values_node = holders[0]
    if "values_node" in params and params["values_node"] != values_node:
        raise InvalidInput(f"params.values_node: {_show(params['values_node'])} does not hold "
                           f"the values; the job's columns put them at {values_node!r}")
    part = next(n for n in nodes if n.name == values_node)
    for value in values:
        if value == keys[values_node]:
            raise InvalidInput(f"params.values: {value!r} is the key column at {values_node!r}; "
                               "the key and the values must be different columns")
        if value not in part.columns:
            raise InvalidInput(f"params.values: {value!r} is not in the columns of "
                               f"{values_node!r}, which holds the other values; all values "
                               "must be at one node")
    scale = params.get("scale", 0)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise InvalidInput(f"params.scale: expected an integer 0-{MAX_SCALE} (decimal digits "
                           f"kept), got {_show(scale)}")
    return {
        "values": values,
        "values_node": values_node,
        "scale": scale,
        "bound": str(_bound(params["bound"], scale)),
        "paillier_n": str(check_modulus(params["paillier_n"], "params.paillier_n")),
    }


def _check_columns(kind: str, nodes: Sequence[NodePart], out: Mapping[str, Any]) -> None:
    """Each node lists exactly the columns the job uses there: least privilege."""
    values = tuple(out.get("values", ()))
    for part in nodes:
        key = out["keys"][part.name]
        uses = (key, *values) if part.name == out.get("values_node") else (key,)
        missing = [c for c in uses if c not in part.columns]
        if missing:
            raise InvalidInput(f"node {part.name!r}: columns must include {missing[0]!r}, which "
                               f"this {kind} job uses there")
        extra = [c for c in part.columns if c not in uses]
        if extra:
            raise InvalidInput(f"node {part.name!r}: column {extra[0]!r} is not used by this "
                               f"{kind} job (it uses there: {', '.join(uses)}); list only those")


def _show(value: object) -> str:
    return repr(value[:40]) if isinstance(value, str) else repr(value) if isinstance(
        value, int | bool) else type(value).__name__


_SUM_HINTS = {
    "values": ': the columns to total over the intersection, e.g. values = ["spend"]',
    "bound": ': the largest |value| of one key, e.g. bound = "1000000"',
    "paillier_n": ": your Paillier public key (paillier_key = \"FILE\" from `veil keys paillier`)",
}


def leader(spec: JobSpec) -> str:
    """The node the analyst asks for a run: the keys node of an intersection sum (it adds the
    values node's encrypted values), else the job's first node."""
    p = psi_params(spec)
    if p.values_node is not None:
        return p.peer(p.values_node)
    return spec.nodes[0].name


def values_packing(p: PsiParams, addends: int) -> Any:
    """How the values node packs one key's values into Paillier plaintexts, with room for the
    sum over ``addends`` keys (its set size); the analyst unpacks the totals with the same."""
    from phe.paillier import PaillierPublicKey

    from veil.protocols.packing import Packing

    assert p.bound is not None and p.paillier_n is not None
    return Packing.for_key(PaillierPublicKey(p.paillier_n), lower=-p.bound, upper=p.bound,
                           digits=p.scale, addends=max(1, addends))
