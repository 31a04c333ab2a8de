"""Job specs: what an analyst asks to compute, in a form approvers can sign off on.

An analyst writes a job as TOML (see ``examples/*-job.toml``); :func:`parse_job_toml`
validates it into a frozen :class:`JobSpec`. The spec is then fixed as canonical JSON
bytes (:func:`canonical_bytes`) and signed by the analyst (:func:`sign_job`). Every node
verifies the signature, and everything downstream (approvals, grants, log entries) refers
to the job by :func:`job_id`, a digest of those exact bytes, so an approval covers exactly
what was signed and a replayed submission is recognised as the same job.

For ``query`` jobs the SQL is normalized (``sandbox.normalize``, passed in) before it is
signed, so an approval binds the query modulo whitespace and comments.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.node.errors import ApprovalRequired, InvalidInput, VerificationError
from veil.node.jobs import _dp, _psi, _sum
from veil.node.jobs._kinds import KINDS, MAX_NODES, SCHEMAS
from veil.node.jobs._tariff import QUOTA_METERS, Quota
from veil.protocols import signing
from veil.protocols.canonical import canonical_json

PSI_OUTPUTS = _psi.PSI_OUTPUTS
#: a job may not be valid for longer than this after it is written
MAX_LIFETIME = timedelta(days=365)
#: version of the canonical form; bump on any change to it
CANONICAL_VERSION = 1
MAX_JOB_BYTES = 1 << 20

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")

_TOP_KEYS = ("purpose", "kind", "expires", "quota", "nodes", "params", "dp")
_NODE_KEYS = ("name", "dataset", "columns", "address")
_NODE_REQUIRED = ("name", "dataset", "columns")
_ADDRESS = re.compile(r"(?:[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]):"
                      r"([1-9][0-9]{0,4})")
_CANONICAL_KEYS = frozenset(_TOP_KEYS) - {"dp"} | {"v", "nonce", "analyst"}


# ---------------------------------------------------------------------------- values


def check_node_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise InvalidInput(
            f"{where}: expected a node name (letters, digits, '.', '_', '-'; at most 63), "
            f"got {name!r}"
        )
    return name


def check_address(address: object, where: str) -> str:
    """host:port of a node (a name, an IPv4 address or a [bracketed] IPv6 address)."""
    m = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if m is None or int(m.group(2)) > 65535:
        raise InvalidInput(
            f"{where}: expected host:port with a port 1-65535, like \"bank-a.example:7400\", "
            f"got {address!r}"
        )
    return str(address)


def check_identifier(name: object, where: str) -> str:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise InvalidInput(
            f"{where}: expected an identifier (letters, digits, '_'; not starting with a "
            f"digit; at most 63), got {name!r}"
        )
    return name


def check_text(value: object, where: str, *, max_len: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{where}: must not be empty")
    if len(value) > max_len:
        raise InvalidInput(f"{where}: at most {max_len} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: not valid Unicode text (lone surrogate)") from None
    return value


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; microseconds only when non-zero (canonical form)."""
    if moment.tzinfo is None:
        raise InvalidInput(f"expected a time with a UTC offset, got naive {moment.isoformat()}")
    t = moment.astimezone(UTC)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += f".{t.microsecond:06d}"
    return text + "Z"


_RELATIVE = re.compile(r"([1-9][0-9]{0,3})([dh])")


def parse_time(text: object, where: str) -> datetime:
    """Strict inverse of :func:`format_time`."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise InvalidInput(
            f"{where}: expected an RFC 3339 UTC time like 2026-12-31T00:00:00Z, got {text!r}"
        )
    try:
        moment = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}: {text!r}") from None
    return moment


def _check_count(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def _unknown_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InvalidInput(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


# ------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class NodePart:
    """What one node contributes to a job: a dataset of its catalog and the columns used, and
    where the node is reached (jobs across nodes name every node's address; the address only
    locates a node: peers are identified by their certificates)."""

    name: str
    dataset: str
    columns: tuple[str, ...]
    address: str | None = None

    def __post_init__(self) -> None:
        check_node_name(self.name, "node name")
        if self.address is not None:
            check_address(self.address, f"node {self.name!r}: address")
        check_identifier(self.dataset, f"node {self.name!r}: dataset")
        if not isinstance(self.columns, tuple) or not self.columns:
            raise InvalidInput(f"node {self.name!r}: columns must be a non-empty list")
        for column in self.columns:
            check_identifier(column, f"node {self.name!r}: column")
        duplicates = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicates:
            raise InvalidInput(f"node {self.name!r}: column {duplicates[0]!r} listed twice")


@dataclass(frozen=True)
class JobSpec:
    """A validated job: what, why, where, how much, until when, and by whom.

    ``params`` maps kind-specific parameter names to strings; defaults are filled in
    (``psi`` always carries ``normalize`` and ``output``), so the signed form states
    everything.
    """

    purpose: str
    kind: str
    expires: datetime
    quota: Quota
    nodes: tuple[NodePart, ...]
    params: Mapping[str, Any]
    nonce: str
    analyst: str
    #: the job's ``[dp]`` table: it runs under differential privacy (see ``_dp``)
    dp: _dp.DpRequest | None = None

    def __post_init__(self) -> None:
        check_text(self.purpose, "purpose", max_len=2000)
        if self.kind not in KINDS:
            raise InvalidInput(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.expires, datetime) or self.expires.tzinfo is None:
            raise InvalidInput(f"expires: expected a time with a UTC offset, got {self.expires!r}")
        object.__setattr__(self, "expires", self.expires.astimezone(UTC))
        if not isinstance(self.quota, Quota):
            raise InvalidInput(f"quota: expected a Quota, got {type(self.quota).__name__}")
        if self.quota.runs is None or self.quota.runs < 1:
            raise InvalidInput(f"quota.runs: required, at least 1, got {self.quota.runs!r}")
        if not isinstance(self.nonce, str) or not _NONCE.fullmatch(self.nonce):
            raise InvalidInput(f"nonce: expected 32 lowercase hex digits, got {self.nonce!r}")
        check_text(self.analyst, "analyst", max_len=200)
        self._check_nodes()
        object.__setattr__(self, "params", MappingProxyType(self._checked_params()))
        if self.dp is not None:
            self._check_dp(self.dp)

    def _check_nodes(self) -> None:
        if not isinstance(self.nodes, tuple) or not all(
            isinstance(n, NodePart) for n in self.nodes
        ):
            raise InvalidInput("nodes: expected a list of [[nodes]] tables")
        count = len(self.nodes)
        schema = SCHEMAS[self.kind]
        if not schema.min_nodes <= count <= schema.max_nodes:
            raise InvalidInput(
                f"nodes: a {self.kind} job needs {schema.node_count()} [[nodes]] entries, "
                f"got {count}"
            )
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInput(f"nodes: node {duplicates[0]!r} appears twice; list each node once")
        if schema.max_nodes > 1:
            for n in self.nodes:
                if n.address is None:
                    raise InvalidInput(
                        f"node {n.name!r}: address is required in a {self.kind} job (host:port "
                        "where the node serves), so that the nodes can reach each other"
                    )

    def _checked_params(self) -> dict[str, Any]:
        if not isinstance(self.params, Mapping):
            raise InvalidInput(f"params: expected a table, got {type(self.params).__name__}")
        if self.kind == "sum":
            params = _sum.check(self.params, [n.name for n in self.nodes])
            self._check_sum_columns(_sum.parse(params))
            return params
        if self.kind in _psi.PSI_KINDS:
            return _psi.check(self.kind, self.params, self.nodes)
        schema = SCHEMAS[self.kind]
        required, defaults = schema.required, dict(schema.defaults)
        allowed = required + tuple(defaults)
        _unknown_keys(self.params, allowed, f"params of a {self.kind} job")
        params = {**defaults, **self.params}
        for name in required:
            if name not in params:
                raise InvalidInput(f"params.{name}: required for a {self.kind} job")
        for name, value in params.items():
            limit = 1_000_000 if name == "sql" else 200
            check_text(value, f"params.{name}", max_len=limit)
        return params  # query: the only other kind

    def _check_dp(self, dp: _dp.DpRequest) -> None:
        if not isinstance(dp, _dp.DpRequest):
            raise InvalidInput(f"dp: expected a DpRequest, got {type(dp).__name__}")
        if self.kind not in _dp.DP_KINDS:
            raise InvalidInput(f"dp: a {self.kind} job cannot run under differential privacy "
                               f"(kinds that can: {', '.join(_dp.DP_KINDS)}); remove [dp]")
        for part in self.nodes:
            missing = sorted(set(_dp.used_columns(dp)) - set(part.columns))
            if missing:
                raise InvalidInput(
                    f"dp: column {missing[0]!r} has declared bounds or categories but node "
                    f"{part.name!r} does not list it in its columns"
                )

    def _check_sum_columns(self, params: _sum.SumParams) -> None:
        """A sum job's nodes list the columns it sums and groups by; others only for its
        filter (least privilege: the node's sandbox sees no other column)."""
        used = set(params.used_columns)
        for part in self.nodes:
            missing = sorted(used - set(part.columns))
            if missing:
                raise InvalidInput(
                    f"node {part.name!r}: columns must include {missing[0]!r}, which this sum "
                    "job uses"
                )
            extra = sorted(set(part.columns) - used)
            if extra and params.where is None:
                raise InvalidInput(
                    f"node {part.name!r}: column {extra[0]!r} is not used by this sum job "
                    f"(it uses: {', '.join(sorted(used))}); list only those"
                )

    def part(self, node_name: str) -> NodePart | None:
        """This node's part of the job, or None when the job does not name it."""
        for part in self.nodes:
            if part.name == node_name:
                return part
        return None


# ---------------------------------------------------------------------- from TOML


def parse_job_toml(
    text: str,
    *,
    analyst: str,
    normalize_sql: Callable[[str], str],
    nonce: str | None = None,
    now: datetime | None = None,
    base_dir: Path | None = None,
) -> JobSpec:
    """Validate a job file into a :class:`JobSpec`.

    ``analyst`` is the name the job is submitted under (from the analyst's certificate);
    ``normalize_sql`` is ``sandbox.normalize`` (applied to a ``query`` job's SQL before
    it is signed); ``base_dir`` is the job file's directory, against which a sum job's
    ``paillier_key`` file is read; ``nonce`` (32 hex digits) is drawn at random when not given; ``now``
    defaults to the current time and decides whether ``expires`` is acceptable: after
    now, and no more than a year away.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"job is not valid TOML: {exc}") from None
    _unknown_keys(doc, _TOP_KEYS, "job")
    for key in ("purpose", "kind", "expires", "quota", "nodes"):
        if key not in doc:
            raise InvalidInput(f"job: {key!r} is required{_HINTS[key]}")
    purpose = check_text(doc["purpose"], "purpose", max_len=2000).strip()
    kind = doc["kind"]
    if kind not in KINDS:
        raise InvalidInput(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    expires = doc["expires"]
    now = datetime.now(UTC) if now is None else now
    if isinstance(expires, str) and (m := _RELATIVE.fullmatch(expires.strip())):
        # "30d" or "12h": resolved now, so the signed spec carries an absolute time
        amount, unit = int(m.group(1)), m.group(2)
        expires = now + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    if not isinstance(expires, datetime) or expires.tzinfo is None:
        raise InvalidInput(
            f"expires: expected an offset date-time like 2026-12-31T00:00:00Z or a duration "
            f"from now like \"30d\" or \"12h\", got {expires!r}"
            " (a date or local time is ambiguous across time zones)"
        )
    if expires <= now:
        raise InvalidInput(
            f"expires: the job expired at {format_time(expires)} (now {format_time(now)}); "
            "set a later time"
        )
    if expires > now + MAX_LIFETIME:
        raise InvalidInput(
            f"expires: {format_time(expires)} is more than a year away; "
            f"the latest allowed is {format_time(now + MAX_LIFETIME)}"
        )
    quota = _quota_from_toml(doc["quota"])
    nodes = _nodes_from_toml(doc["nodes"])
    dp = _dp.parse_request(doc["dp"]) if "dp" in doc else None
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"params: expected a [params] table, got {type(params).__name__}")
    params = dict(params)
    if kind in ("sum", "intersection_sum") and "paillier_key" in params:
        if "paillier_n" in params:
            raise InvalidInput("params: give paillier_key (a file) or paillier_n, not both")
        if base_dir is None:
            raise InvalidInput("params.paillier_key: a key file can only be read from a job file "
                               "(give paillier_n, the modulus, instead)")
        key = params.pop("paillier_key")
        if not isinstance(key, str) or not key.strip():
            raise InvalidInput("params.paillier_key: expected the path of a public key file")
        params["paillier_n"] = str(_sum.read_public_key(base_dir / key))
    if kind == "query" and isinstance(params.get("sql"), str):
        if not params["sql"].strip():
            raise InvalidInput("params.sql: must not be empty")
        params["sql"] = normalize_sql(params["sql"])
    return JobSpec(
        purpose=purpose,
        kind=kind,
        expires=expires,
        quota=quota,
        nodes=nodes,
        params=params,
        nonce=secrets.token_hex(16) if nonce is None else nonce,
        analyst=analyst,
        dp=dp,
    )


_HINTS = {
    "purpose": ": a sentence saying why the data is used (approvers read it)",
    "kind": f": one of {', '.join(KINDS)}",
    "expires": ": an offset date-time like 2026-12-31T00:00:00Z",
    "quota": ": a [quota] table with at least runs = 1",
    "nodes": ": one [[nodes]] table per node (name, dataset, columns; address for jobs "
             "across nodes)",
}


def _quota_from_toml(table: object) -> Quota:
    if not isinstance(table, dict):
        raise InvalidInput(f"quota: expected a [quota] table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(QUOTA_METERS))
    if unknown:
        raise InvalidInput(
            f"quota.{unknown[0]}: not a quota meter (quota meters: {', '.join(QUOTA_METERS)})"
        )
    if "runs" not in table:
        raise InvalidInput("quota.runs: required, at least 1")
    values = {k: _check_count(v, f"quota.{k}") for k, v in table.items()}
    # one rule for every meter: a value caps it (and 0 would allow nothing); omit it for no cap
    for name, value in values.items():
        if value < 1:
            hint = "" if name == "runs" else f"; omit {name} for no cap"
            raise InvalidInput(f"quota.{name}: must be at least 1, got {value}{hint}")
    return Quota(**values)


def _nodes_from_toml(entries: object) -> tuple[NodePart, ...]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput("nodes: expected [[nodes]] tables (name, dataset, columns)")
    if len(entries) > MAX_NODES:
        raise InvalidInput(f"nodes: at most {MAX_NODES} nodes, got {len(entries)}")
    parts = []
    for i, entry in enumerate(entries):
        where = f"nodes[{i}]"
        _unknown_keys(entry, _NODE_KEYS, where)
        for key in _NODE_REQUIRED:
            if key not in entry:
                raise InvalidInput(f"{where}.{key}: required")
        if "address" in entry:
            check_address(entry["address"], f"{where}.address")
        check_node_name(entry["name"], f"{where}.name")
        check_identifier(entry["dataset"], f"{where}.dataset")
        columns = entry["columns"]
        if not isinstance(columns, list) or not columns:
            raise InvalidInput(f"{where}.columns: expected a non-empty list of column names")
        for column in columns:
            check_identifier(column, f"{where}.columns")
        parts.append(NodePart(entry["name"], entry["dataset"], tuple(columns),
                              entry.get("address")))
    return tuple(parts)


# ----------------------------------------------------------------- canonical form


def _to_json_obj(spec: JobSpec) -> dict[str, Any]:
    return {
        "v": CANONICAL_VERSION,
        "analyst": spec.analyst,
        "nonce": spec.nonce,
        "purpose": spec.purpose,
        "kind": spec.kind,
        "expires": format_time(spec.expires),
        "quota": spec.quota.to_dict(),
        "nodes": [_node_obj(n) for n in spec.nodes],
        "params": dict(spec.params),
    } | ({} if spec.dp is None else {"dp": spec.dp.to_obj()})  # absent: older jobs keep bytes


def _node_obj(n: NodePart) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": n.name, "dataset": n.dataset, "columns": list(n.columns)}
    if n.address is not None:  # absent, not null, so that older jobs keep their bytes
        obj["address"] = n.address
    return obj


def canonical_bytes(spec: JobSpec) -> bytes:
    """The bytes that are signed: JSON, sorted keys, no whitespace, UTF-8, ``"v": 1``."""
    return canonical_json(_to_json_obj(spec))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidInput("duplicate key in canonical JSON")
    return obj


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"canonical JSON may not contain {name}")


def load_canonical_json(data: bytes, what: str) -> dict[str, Any]:
    """Decode strict JSON (no duplicate keys, floats, NaN) into an object; for canonical forms."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_JOB_BYTES:
        raise InvalidInput(f"{what}: expected at most {MAX_JOB_BYTES} bytes of canonical JSON")
    try:
        obj = json.loads(
            bytes(data).decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=lambda s: _reject_constant(f"the number {s}"),
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{what}: not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"{what}: expected a JSON object")
    return obj


def spec_from_canonical(data: bytes) -> JobSpec:
    """Strict inverse of :func:`canonical_bytes`: anything but exactly that form is refused."""
    obj = load_canonical_json(data, "job")
    if obj.get("v") != CANONICAL_VERSION:
        raise InvalidInput(
            f"job: expected canonical version {CANONICAL_VERSION}, got {obj.get('v')!r}"
        )
    if set(obj) - {"dp"} != _CANONICAL_KEYS:
        raise InvalidInput(
            f"job: expected exactly the keys {', '.join(sorted(_CANONICAL_KEYS))}, "
            f"got {', '.join(sorted(obj))}"
        )
    nodes = obj["nodes"]
    if not isinstance(nodes, list) or not all(
        isinstance(n, dict) and set(_NODE_REQUIRED) <= set(n) <= set(_NODE_KEYS)
        and isinstance(n["columns"], list)
        for n in nodes
    ):
        raise InvalidInput(
            "job: nodes must be objects with exactly name, dataset, columns and an optional address"
        )
    params = obj["params"]
    if not isinstance(params, dict):
        raise InvalidInput("job: params must be an object")
    spec = JobSpec(
        purpose=obj["purpose"],
        kind=obj["kind"],
        expires=parse_time(obj["expires"], "expires"),
        quota=Quota.from_dict(obj["quota"]),
        nodes=tuple(NodePart(n["name"], n["dataset"], tuple(n["columns"]), n.get("address"))
                    for n in nodes),
        params=params,
        nonce=obj["nonce"],
        analyst=obj["analyst"],
        dp=_dp.parse_request(obj["dp"]) if "dp" in obj else None,
    )
    if canonical_bytes(spec) != bytes(data):
        raise InvalidInput("job: bytes are valid but not in canonical form (re-encode and re-sign)")
    return spec


# ------------------------------------------------------------------------ signing


@dataclass(frozen=True)
class SignedJob:
    """A job's canonical bytes and the analyst's Ed25519 signature over them."""

    canonical: bytes
    signature: bytes = field(repr=False)


def sign_job(spec: JobSpec, private_key: Ed25519PrivateKey) -> SignedJob:
    canonical = canonical_bytes(spec)
    return SignedJob(canonical, signing.sign(private_key, signing.JOB, canonical))


def verify_job(
    signed: SignedJob,
    public_key: Ed25519PublicKey,
    *,
    normalize_sql: Callable[[str], str] | None = None,
) -> JobSpec:
    """Check the signature, then decode the spec; raise VerificationError on any mismatch.

    With ``normalize_sql``, a ``query`` job whose SQL is not already in normalized form
    is refused, so what approvers see is what the sandbox runs.
    """
    try:
        signing.verify(public_key, signing.JOB, signed.canonical, signed.signature)
    except signing.SignatureInvalid:
        raise VerificationError(
            "job signature does not verify with the submitter's key: the job was altered "
            "after signing or signed by someone else; sign it again with your own key"
        ) from None
    spec = spec_from_canonical(bytes(signed.canonical))
    sql = spec.params.get("sql")
    if normalize_sql is not None and sql is not None and normalize_sql(sql) != sql:
        raise InvalidInput(
            "params.sql is not in normalized form; build the job with the same "
            "normalize function as the node (veil's parse_job_toml does this)"
        )
    return spec


def job_id(signed: SignedJob) -> str:
    """First 32 hex digits of SHA-256 over the canonical bytes: the same job, the same id."""
    return hashlib.sha256(bytes(signed.canonical)).hexdigest()[:32]


def check_not_expired(spec: JobSpec, now: datetime | None = None) -> None:
    """Raise :class:`ApprovalRequired` once the job has expired: it can no longer run."""
    now = datetime.now(UTC) if now is None else now
    if now >= spec.expires:
        raise ApprovalRequired(
            f"job expired at {format_time(spec.expires)} (now {format_time(now)}); "
            "submit a new job with a later `expires`"
        )
