"""The client SDK: everything the CLI does, for notebooks and scripts.

    from veil.node.client import Client
    with Client("127.0.0.1:7400", identity="~/veil/alice") as node:
        for ds in node.datasets():
            print(ds.name, ds.version, ds.rows, ds.levels())
        print(node.last_receipt)          # where the call landed in the node's log

Every call returns plain dataclasses; the receipt of the last call (its log index
and the signed checkpoint covering it) is in ``last_receipt``. A refusal raises a
:class:`node.errors.VeilError` subclass whose message is the node's.
"""

from __future__ import annotations

import dataclasses

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from veil.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    psi_pb2,
    psi_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    sum_pb2,
    sum_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from veil.node import federation, pki
from veil.node._convert import dataset_version_from_proto, meters_from_proto, query_result_from_proto
from veil.node._rpc import TRAILER_CHECKPOINT, TRAILER_INDEX
from veil.node.catalog import DatasetVersion
from veil.node.errors import (
    InvalidInput,
    VeilError,
    VerificationError,
    remote_error,
)

from veil.node.jobs import SumTotals

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class CallReceipt:
    """Where a call landed in the node's log; `veil audit prove` verifies it."""

    node: str
    log_index: int
    checkpoint: str  # signed note

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "log_index": self.log_index, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class NodeInfo:
    name: str
    federation: str
    version: str
    certificate_pem: str
    log_vkey: str
    log_origin: str
    job_kinds: tuple[str, ...]
    caller_role: str
    caller_name: str


@dataclass(frozen=True)
class JobInfo:
    """A job as one node holds it."""

    id: str
    analyst: str
    kind: str
    purpose: str
    state: str  # pending, approved, rejected, revoked, expired
    required_roles: tuple[str, ...]
    missing_roles: tuple[str, ...]
    approvals: tuple[dict[str, str], ...]
    quota: dict[str, int]  # 0 = no cap for optional meters
    used: dict[str, int]
    expires: str
    revoked_reason: str
    estimate: dict[str, Any]
    #: what the analyst signed, decoded from the job's canonical bytes (not from unsigned
    #: fields): the exact normalized SQL or protocol parameters, and every node's part
    params: dict[str, str]
    parts: tuple[dict[str, Any], ...]
    canonical: bytes
    #: the job's signed [dp] table (canonical form), or None for a job without DP
    dp: dict[str, Any] | None = None

    @classmethod
    def from_proto(cls, j: Any) -> JobInfo:
        from veil.node.jobs import SignedJob, job_id, spec_from_canonical

        spec = spec_from_canonical(bytes(j.canonical))
        if job_id(SignedJob(bytes(j.canonical), b"")) != j.job_id:
            raise VerificationError(
                f"job {j.job_id}: the node returned signed bytes of another job"
            )
        return cls(
            j.job_id, j.analyst, j.kind, j.purpose, j.state, tuple(j.required_roles),
            tuple(j.missing_roles),
            tuple({"approver": a.approver, "role": a.role, "decision": a.decision,
                   "reason": a.reason, "time": a.time} for a in j.approvals),
            {"runs": j.quota.runs, "rows_scanned": j.quota.rows_scanned, "items": j.quota.items},
            meters_from_proto(j.used), j.expires, j.revoked_reason,
            json.loads(j.estimate_json) if j.estimate_json else {},
            dict(spec.params),
            tuple({"name": p.name, "dataset": p.dataset, "columns": list(p.columns),
                   **({"address": p.address} if p.address else {})} for p in spec.nodes),
            bytes(j.canonical),
            None if spec.dp is None else spec.dp.to_obj(),
        )


@dataclass(frozen=True)
class Statement:
    node: str
    analyst: str
    currency: str
    lines: tuple[dict[str, Any], ...]  # log_index, time, job, method, meters, amount (Decimal)
    total: Decimal                     # and, for a differentially private release, dp:
                                       # {dataset, measure, spent}
    #: the analyst's differential-privacy budgets at the node, now (DpBudget fields)
    budgets: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "analyst": self.analyst, "currency": self.currency,
            "lines": [{**line, "amount": str(line["amount"])} for line in self.lines],
            "total": str(self.total),
            "budgets": list(self.budgets),
        }


@dataclass(frozen=True)
class QueryResult:
    """An approved query's answer: aggregates only, as numpy arrays by column."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    arrays: dict[str, Any]  # name -> numpy.ndarray
    rows: int
    suppressed_groups: int
    meters: dict[str, int]
    result_sha256: str
    dataset_versions: tuple[str, ...]
    #: under differential privacy: per measurement, how it was noised (DpRelease fields)
    dp: tuple[dict[str, Any], ...] = ()
    #: under differential privacy: the analyst's budget on the dataset after this run
    budget: dict[str, str] | None = None

    def records(self) -> list[tuple[Any, ...]]:
        return list(zip(*(self.arrays[c].tolist() for c in self.columns)))


@dataclass(frozen=True)
class PsiOutcome:
    """One PSI run: the intersection's size, both set sizes, an intersection sum's totals,
    the receivers' new dataset versions and both nodes' receipts."""

    run_id: str
    kind: str
    output: str
    cardinality: int
    set_size: int  # the leader's distinct keys
    peer_set_size: int
    sums: dict[str, Decimal]
    datasets: tuple[dict[str, Any], ...]
    receipts: tuple[dict[str, Any], ...]
    meters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": self.run_id, "kind": self.kind, "output": self.output,
                               "cardinality": self.cardinality,
                               "set_sizes": [self.set_size, self.peer_set_size]}
        if self.kind == "intersection_sum":
            out["sums"] = {c: str(v) for c, v in self.sums.items()}
        out["datasets"] = [dict(d) for d in self.datasets]
        out["receipts"] = [dict(r) for r in self.receipts]
        return out


class Client:
    """A connection to one node, authenticated with a federation identity directory."""

    def __init__(
        self,
        address: str,
        identity: Path | str | pki.LocalIdentity,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        node: str | None = None,
    ) -> None:
        """``node``: the name the server's certificate must carry (checked in the TLS
        handshake), for callers that know which node they mean to reach."""
        self.address = address
        self.identity = (
            identity
            if isinstance(identity, pki.LocalIdentity)
            else pki.load_identity(Path(identity).expanduser())
        )
        self.timeout = timeout
        self._channel = federation.channel(address, self.identity, node=node)
        self._expected_node = node
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(self._channel)
        self._query = query_pb2_grpc.QueryServiceStub(self._channel)
        self._sum = sum_pb2_grpc.SumServiceStub(self._channel)
        self._psi = psi_pb2_grpc.PsiServiceStub(self._channel)
        self._node_name: str | None = None
        self.last_receipt: CallReceipt | None = None

    # -- plumbing ----------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def _receipt(self, trailers: Any) -> None:
        meta = dict(trailers or ())
        if TRAILER_INDEX in meta:
            checkpoint = meta.get(TRAILER_CHECKPOINT, b"")
            self.last_receipt = CallReceipt(
                self.address,
                int(meta[TRAILER_INDEX]),
                checkpoint.decode() if isinstance(checkpoint, bytes) else checkpoint,
            )

    def _error(self, exc: grpc.RpcError) -> VeilError:
        if self._expected_node is not None:
            wrong = federation.wrong_node(exc, self.address, self._expected_node)
            if wrong is not None:
                return wrong
        self._receipt(exc.trailing_metadata())  # type: ignore[attr-defined]
        code = exc.code()  # type: ignore[attr-defined]
        where = (f"{self._expected_node} at {self.address}" if self._expected_node
                 else self.address)  # the node's name when the caller said which node it meant
        error = remote_error(code.name, exc.details() or "", where)  # type: ignore[attr-defined]
        error.receipt = self.last_receipt  # where the refusal was logged (None: it was not)
        return error

    def call(self, method: Any, request: Any) -> Any:
        """Make one unary call; keep its receipt; turn a refusal into a VeilError."""
        self.last_receipt = None
        try:
            response, rpc = method.with_call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._receipt(rpc.trailing_metadata())
        return response

    def stream(self, method: Any, request: Any) -> Iterator[Any]:
        self.last_receipt = None
        responses = method(request, timeout=None)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._receipt(responses.trailing_metadata())

    # -- node and catalog ----------------------------------------------------------

    def info(self) -> NodeInfo:
        r = self.call(self._node.GetInfo, node_pb2.GetInfoRequest())
        return NodeInfo(
            r.name, r.federation, r.version, r.certificate_pem, r.log_vkey, r.log_origin,
            tuple(r.job_kinds), r.caller_role, r.caller_name,
        )

    def datasets(self) -> list[DatasetVersion]:
        """Every version of every dataset: names, schemas, levels, row counts, receipts."""
        r = self.call(self._catalog.ListDatasets, catalog_pb2.ListDatasetsRequest())
        return [v for d in r.datasets for v in _marked(d.name, d.versions)]

    def dataset(self, name: str) -> list[DatasetVersion]:
        r = self.call(self._catalog.GetDataset, catalog_pb2.GetDatasetRequest(name=name))
        return _marked(r.name, r.versions)

    def dataset_receipts(self) -> list[tuple[DatasetVersion, str]]:
        """Each dataset version with the PEM certificate of the node that signed it."""
        r = self.call(self._catalog.ListDatasets, catalog_pb2.ListDatasetsRequest())
        return [
            (dataset_version_from_proto(d.name, v), v.receipt.signer_certificate_pem)
            for d in r.datasets
            for v in d.versions
        ]

    # -- audit -------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, str]:
        r = self.call(self._audit.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        return r.size, r.note

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for batch in self.stream(
            self._audit.GetEntries, audit_pb2.GetEntriesRequest(start=start, end=end)
        ):
            for e in batch.entries:
                yield e.index, e.data

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        r = self.call(
            self._audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
        )
        return list(r.hashes)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        r = self.call(
            self._audit.GetConsistencyProof,
            audit_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
        )
        return list(r.hashes)

    # -- jobs ----------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        if self._node_name is None:
            self._node_name = self.info().name
        return self._node_name

    def submit_signed(self, signed: Any) -> JobInfo:
        r = self.call(self._jobs.SubmitJob,
                      jobs_pb2.SignedJob(canonical=signed.canonical, signature=signed.signature))
        return JobInfo.from_proto(r)

    def submit_job(self, job: str | Path, *, base_dir: Path | None = None) -> JobInfo:
        """Parse, normalize, sign (with this identity's key) and submit a job spec: a job
        file's path, or its TOML text. ``base_dir`` resolves a sum job's ``paillier_key``
        (default: the job file's directory; for text, the current directory)."""
        text, base = job_text(job)
        return self.submit_signed(sign_job_text(text, self.identity, base_dir=base_dir or base))

    def jobs(self, *, analyst: str = "", state: str = "") -> list[JobInfo]:
        r = self.call(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(analyst=analyst, state=state))
        return [JobInfo.from_proto(j) for j in r.jobs]

    def job(self, job_id: str) -> JobInfo:
        return JobInfo.from_proto(self.call(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)))

    def decide(self, job_id: str, decision: str, *, reason: str = "",
               quota: dict[str, int] | None = None) -> JobInfo:
        """Sign and send this approver's decision on a job at this node."""
        from veil.node.jobs import QUOTA_METERS, Decision, Quota, sign_decision

        ident = self.identity.identity
        d = Decision(
            job_id=job_id, node=self.node_name, approver=ident.name, role=ident.role,
            decision=decision, reason=reason,
            quota=Quota(**{k: quota.get(k) for k in QUOTA_METERS}) if quota else None,
            time=datetime.now(UTC),
        )
        signed = sign_decision(d, self.identity)  # type: ignore[arg-type]
        r = self.call(self._jobs.DecideJob, jobs_pb2.SignedDecision(
            canonical=signed.canonical, signature=signed.signature))
        return JobInfo.from_proto(r)

    def approve(self, job_id: str, *, quota: dict[str, int] | None = None,
                reason: str = "") -> JobInfo:
        return self.decide(job_id, "approve", reason=reason, quota=quota)

    def reject(self, job_id: str, reason: str) -> JobInfo:
        return self.decide(job_id, "reject", reason=reason)

    def revoke(self, job_id: str, reason: str) -> JobInfo:
        return JobInfo.from_proto(self.call(
            self._jobs.RevokeJob, jobs_pb2.RevokeJobRequest(job_id=job_id, reason=reason)))

    # -- queries -------------------------------------------------------------------

    def query(self, job_id: str) -> QueryResult:
        """Run an approved query job once (charged against its quota)."""
        r = self.call(self._query.RunQuery, query_pb2.RunQueryRequest(job_id=job_id))
        return QueryResult(
            tuple(c.name for c in r.columns), tuple(c.type for c in r.columns),
            query_result_from_proto(r), r.rows, r.suppressed_groups, meters_from_proto(r.meters),
            r.result_sha256, tuple(r.dataset_versions),
            tuple(_release(d) for d in r.dp),
            _budget(r.budget) if r.HasField("budget") else None,
        )

    def run_sum(self, job_id: str, key: Any) -> SumTotals:
        """Run an approved sum job once at its aggregator (this client's node) and decrypt
        the totals with the analyst's Paillier private key (``veil.node.keys.load_private``).
        Every node's receipt comes back with them, this node's from the call's trailers."""
        import numpy

        from veil.node.jobs import spec_from_canonical, sum_params
        from veil.node.jobs._sum import decode
        from veil.protocols.paillier import Decryptor, ciphertext_from_bytes

        info = self.job(job_id)
        spec = spec_from_canonical(info.canonical)
        p = sum_params(spec.params)
        if key.public_key.n != p.paillier_n:
            raise InvalidInput(f"the key given is not the one job {job_id} encrypts to")
        r = self.call(self._sum.RunSum, sum_pb2.RunSumRequest(job_id=job_id))
        pub = key.public_key
        sums, counts, flags = ([ciphertext_from_bytes(pub, bytes(b)) for b in v]
                               for v in (r.sums, r.counts, r.withheld))
        totals, rows, withheld = decode(p, len(spec.nodes), sums, counts, flags, Decryptor(key),
                                       noisy=spec.dp is not None)
        own = self.last_receipt
        receipts = [{"node": n.node, "log_index": n.receipt.log_index,
                     "checkpoint": n.receipt.checkpoint} for n in r.receipts]
        if own is not None:
            receipts.insert(0, {"node": p.aggregator, "log_index": own.log_index,
                                "checkpoint": own.checkpoint})
        return SumTotals(
            run_id=r.run_id,
            groups=p.categories or ("total",),
            totals={c: numpy.array([g[i] for g in totals], dtype=object)
                    for i, c in enumerate(p.columns)},
            counts=numpy.array(rows, dtype=numpy.int64),
            withheld=numpy.array(withheld, dtype=numpy.int64),
            receipts=tuple(receipts),
        )

    def run_psi(self, job_id: str, key: Any = None,
                progress: Any = None) -> PsiOutcome:
        """Run an approved psi or intersection_sum job once at its leader (this client's
        node). ``progress(done, total)`` hears how many points the leader has blinded; an
        intersection sum's totals are decrypted with ``key`` (the analyst's Paillier private
        key). Both nodes' receipts come back with the result."""
        from veil.node.jobs import leader, psi_params, spec_from_canonical, values_packing
        from veil.protocols.paillier import Decryptor, ciphertext_from_bytes

        info = self.job(job_id)
        spec = spec_from_canonical(info.canonical)
        p = psi_params(spec)
        if p.paillier_n is not None and (key is None or key.public_key.n != p.paillier_n):
            raise InvalidInput(f"job {job_id} is an intersection sum: give the private key "
                               "it encrypts to (--key DIR, from `veil keys paillier`)")
        result = None
        for update in self.stream_call(self._psi.RunPsi, psi_pb2.RunPsiRequest(job_id=job_id)):
            if update.HasField("progress"):
                if progress is not None:
                    progress(update.progress.done, update.progress.total)
            else:
                result = update.result
        if result is None:
            raise InvalidInput(f"node {self.address} ended the run without a result")
        sums: dict[str, Decimal] = {}
        if p.paillier_n is not None and result.cardinality:
            pub = key.public_key
            plain = Decryptor(key).decrypt_many(
                [ciphertext_from_bytes(pub, bytes(b)) for b in result.sums])
            values = values_packing(p, result.peer_set_size).unpack_decimal(
                plain, len(p.values), result.cardinality)
            sums = dict(zip(p.values, values))
        elif p.paillier_n is not None:
            sums = {c: Decimal(0).scaleb(-p.scale) for c in p.values}
        own = self.last_receipt
        receipts = []
        if own is not None:
            receipts.append({"node": leader(spec), "log_index": own.log_index,
                             "checkpoint": own.checkpoint})
        receipts += [{"node": n.node, "log_index": n.receipt.log_index,
                      "checkpoint": n.receipt.checkpoint} for n in result.receipts]
        datasets = tuple({"node": d.node, "dataset": d.dataset, "version": d.version,
                          "sha256": d.sha256, "rows": d.rows, "log_index": d.log_index}
                         for d in result.datasets)
        return PsiOutcome(run_id=result.run_id, kind=spec.kind, output=p.output,
                          cardinality=result.cardinality, set_size=result.set_size,
                          peer_set_size=result.peer_set_size, sums=sums, datasets=datasets,
                          receipts=tuple(receipts), meters=meters_from_proto(result.meters))

    def stream_call(self, method: Any, request: Any) -> Iterator[Any]:
        """A server-streaming call under this client's timeout; the receipt is kept."""
        self.last_receipt = None
        responses = method(request, timeout=self.timeout)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        self._receipt(responses.trailing_metadata())

    # -- usage ---------------------------------------------------------------------

    def statement(self, analyst: str = "", start: str = "", end: str = "") -> Statement:
        r = self.call(self._usage.GetStatement, usage_pb2.GetStatementRequest(
            analyst=analyst, from_time=start, to_time=end))
        return Statement(
            r.node, r.analyst, r.currency,
            tuple({"log_index": line.log_index, "time": line.time, "job": line.job_id,
                   "method": line.method, "meters": meters_from_proto(line.meters),
                   "amount": Decimal(line.amount),
                   **({"dp": {"dataset": line.dp_dataset, "measure": line.dp_measure,
                              "spent": line.dp_spent}} if line.dp_spent else {})}
                  for line in r.lines),
            Decimal(r.total),
            tuple(_budget(b) for b in r.budgets),
        )


def _budget(b: Any) -> dict[str, str]:
    return {f: getattr(b, f) for f in ("dataset", "measure", "total", "spent", "remaining",
                                       "period_start", "period_end", "max_per_run")}


def _release(d: Any) -> dict[str, Any]:
    return {"measurement": d.measurement, "columns": list(d.columns), "mechanism": d.mechanism,
            "measure": d.measure, "spent": d.spent, "scale": d.scale, "std": d.std,
            "ci95": d.ci95}


def job_text(job: str | Path) -> tuple[str, Path | None]:
    """A job given as a path (``Path``, or a one-line string naming a file) or as TOML text
    -> (text, the directory its relative paths are resolved from)."""
    if isinstance(job, Path) or ("\n" not in job and job.endswith(".toml")):
        path = Path(job).expanduser()
        try:
            return path.read_text(), path.parent
        except OSError as exc:
            raise InvalidInput(f"cannot read job file {path}: {exc.strerror}") from None
    return job, None


def _marked(name: str, versions: Any) -> list[DatasetVersion]:
    out = [dataset_version_from_proto(name, v) for v in versions]
    newest = max((v.version for v in out), default=None)
    return [dataclasses.replace(v, latest=v.version == newest) for v in out]


def submit_everywhere(toml_text: str | Path, identity: Path | str | pki.LocalIdentity, *,
                      base_dir: Path | None = None) -> dict[str, JobInfo | VeilError]:
    """Sign a job once and submit the same signed job to every node it names, at the
    address the job gives, checking each node's certificate; the id is the same everywhere.
    Returns each node's answer: its view of the job, or why it refused it."""
    from veil.node.jobs import job_id, spec_from_canonical

    ident = identity if isinstance(identity, pki.LocalIdentity) else pki.load_identity(
        Path(identity).expanduser())
    text, base = job_text(toml_text)
    signed = sign_job_text(text, ident, base_dir=base_dir or base)
    spec = spec_from_canonical(signed.canonical)
    out: dict[str, JobInfo | VeilError] = {}
    for part in spec.nodes:
        if part.address is None:
            out[part.name] = InvalidInput(f"the job gives no address for node {part.name!r}")
            continue
        try:
            with Client(part.address, ident, node=part.name) as c:
                out[part.name] = c.submit_signed(signed)
        except VeilError as exc:
            out[part.name] = exc
    assert all(isinstance(v, VeilError) or v.id == job_id(signed) for v in out.values())
    return out


def sign_job_text(toml_text: str, identity: pki.LocalIdentity, *,
                  base_dir: Path | None = None) -> Any:
    """A job spec file's text → a SignedJob by ``identity`` (SQL normalized by DuckDB)."""
    from veil.node.jobs import parse_job_toml, sign_job
    from veil.node.queries import normalize

    spec = parse_job_toml(toml_text, analyst=identity.identity.name, normalize_sql=normalize,
                          base_dir=base_dir)
    return sign_job(spec, identity)  # type: ignore[arg-type]
