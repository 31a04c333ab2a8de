"""Server assembly: a node directory in, a running gRPC server with mTLS out.

TLS: the node presents its federation certificate and requires a client
certificate from the federation CA at the handshake (grpcio's Python API can only
require a certificate or not ask for one at all). A client without one, with an
expired one or with one from another CA fails the handshake and sees UNAVAILABLE;
the gate (``node/_rpc.py``) then checks revocation and role and answers
UNAUTHENTICATED or PERMISSION_DENIED with a message. See the README's "What a
client sees" table.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sqlite3
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from veil.v1 import audit_pb2, catalog_pb2, jobs_pb2, node_pb2, query_pb2, usage_pb2

from veil.node import catalog, queries
from veil.node._convert import (
    dataset_version_to_proto,
    job_to_proto,
    meters_to_proto,
    query_result_to_proto,
)
from veil.node._rpc import Call, Gate, Method
from veil.node.errors import ConfigError, InvalidInput, NotFound, PolicyDenied
from veil.node.grants import Grants, statement_total
from veil.node.home import NodeHome
from veil.node.jobs import SignedJob, check_analyst
from veil.node.log import Log, event, parse_user_time
from veil.node.pki import APPROVER_ROLES, ROLES, Identity

log = logging.getLogger("veil.server")

VERSION = "0.1.0"
ANY_ROLE = frozenset(ROLES)
AUDITOR = frozenset({"auditor"})
ANALYST = frozenset({"analyst"})
APPROVERS = frozenset(APPROVER_ROLES)
OPERATOR = frozenset({"operator"})
STATEMENT_READERS = frozenset({"analyst", "operator", "auditor"})
MAX_MESSAGE = 64 * 1024 * 1024
ENTRY_BATCH_BYTES = 256 * 1024


@dataclass
class NodeRuntime:
    """Everything the handlers of one node share."""

    home: NodeHome
    log: Log
    conn: sqlite3.Connection = field(repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    grants: Grants = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.grants = Grants(self.conn, self.lock, self.log, self.home.config, self.home.snapshots)

    @property
    def name(self) -> str:
        return self.home.config.name

    @cached_property
    def cert_pem(self) -> str:
        """The node's certificate, sent with every catalog listing: read once."""
        return self.home.identity.read_tls_cert().decode()

    @cached_property
    def log_vkey(self) -> str:
        return self.home.signer().vkey

    def deny(self, who: Identity) -> str | None:
        """The negative list, checked by the gate on every call of an analyst."""
        if who.role == "analyst":
            try:
                check_analyst(who.name, self.home.config.policy)
            except PolicyDenied as exc:
                return str(exc)
        return None

    # -- NodeService -----------------------------------------------------------

    def get_info(self, _req: node_pb2.GetInfoRequest, call: Call) -> node_pb2.NodeInfo:
        ident = self.home.identity.identity
        return node_pb2.NodeInfo(
            name=self.name,
            federation=ident.federation,
            version=VERSION,
            certificate_pem=self.cert_pem,
            log_vkey=self.log_vkey,
            log_origin=self.home.origin,
            job_kinds=["query"],
            caller_role=call.identity.role,
            caller_name=call.identity.name,
        )

    # -- CatalogService --------------------------------------------------------

    def list_datasets(
        self, _req: catalog_pb2.ListDatasetsRequest, _call: Call
    ) -> catalog_pb2.ListDatasetsResponse:
        pem = self.cert_pem
        with self.lock:
            versions = catalog.all_versions(self.conn)
        return catalog_pb2.ListDatasetsResponse(
            datasets=[
                catalog_pb2.Dataset(
                    name=name, versions=[dataset_version_to_proto(v, pem) for v in vs]
                )
                for name, vs in versions.items()
            ]
        )

    def get_dataset(self, req: catalog_pb2.GetDatasetRequest, _call: Call) -> catalog_pb2.Dataset:
        pem = self.cert_pem
        with self.lock:
            versions = catalog.all_versions(self.conn).get(req.name)
            if versions is None:
                catalog.current(self.conn, req.name)  # raises NotFound naming what exists
                raise NotFound(req.name)
        return catalog_pb2.Dataset(
            name=req.name, versions=[dataset_version_to_proto(v, pem) for v in versions]
        )

    # -- AuditService ----------------------------------------------------------

    def get_checkpoint(self, _req: audit_pb2.GetCheckpointRequest, _call: Call) -> audit_pb2.Checkpoint:
        size, note = self.log.latest_checkpoint()
        return audit_pb2.Checkpoint(note=note, size=size)

    def get_entries(
        self, req: audit_pb2.GetEntriesRequest, call: Call
    ) -> Iterator[audit_pb2.LogEntries]:
        size = self.log.size()
        end = req.end or size
        if req.start > end:
            raise InvalidInput(f"start {req.start} is past end {end}")
        if end > size:
            raise InvalidInput(f"end {end} is past the latest checkpoint's size {size}")
        call.details = {"start": req.start, "end": end}
        return self._entry_batches(req.start, end)

    def _entry_batches(self, start: int, end: int) -> Iterator[audit_pb2.LogEntries]:
        batch = audit_pb2.LogEntries()
        size = 0
        for i, data in self.log.entries(start, end):
            batch.entries.add(index=i, data=data)
            size += len(data)
            if size >= ENTRY_BATCH_BYTES:
                yield batch
                batch, size = audit_pb2.LogEntries(), 0
        if batch.entries:
            yield batch

    def get_inclusion_proof(self, req: audit_pb2.GetInclusionProofRequest, _call: Call) -> audit_pb2.Proof:
        size = req.tree_size or self.log.size()
        if req.index >= size:
            raise InvalidInput(f"index {req.index} is past the tree size {size}")
        return audit_pb2.Proof(tree_size=size, hashes=self.log.inclusion_proof(req.index, size))

    def get_consistency_proof(
        self, req: audit_pb2.GetConsistencyProofRequest, _call: Call
    ) -> audit_pb2.Proof:
        size = req.new_size or self.log.size()
        if req.old_size > size:
            raise InvalidInput(f"old size {req.old_size} is larger than new size {size}")
        return audit_pb2.Proof(tree_size=size, hashes=self.log.consistency_proof(req.old_size, size))

    # -- JobService --------------------------------------------------------------

    def submit_job(self, req: jobs_pb2.SignedJob, call: Call) -> jobs_pb2.Job:
        view, _created = self.grants.submit(SignedJob(req.canonical, req.signature), call.identity)
        call.job_id = view.id
        return job_to_proto(view, self.home.config)

    def list_jobs(self, req: jobs_pb2.ListJobsRequest, call: Call) -> jobs_pb2.ListJobsResponse:
        analyst = req.analyst or None
        if call.identity.role == "analyst":
            if analyst not in (None, call.identity.name):
                raise PolicyDenied("analysts may list only their own jobs")
            analyst = call.identity.name
        views = [v for v in self.grants.jobs(analyst) if not req.state or v.state == req.state]
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(v, self.home.config) for v in views])

    def get_job(self, req: jobs_pb2.GetJobRequest, call: Call) -> jobs_pb2.Job:
        call.job_id = req.job_id
        return job_to_proto(self.grants.view(req.job_id, call.identity), self.home.config)

    def decide_job(self, req: jobs_pb2.SignedDecision, call: Call) -> jobs_pb2.Job:
        view = self.grants.decide(req.canonical, req.signature, call.identity)
        call.job_id = view.id
        return job_to_proto(view, self.home.config)

    def revoke_job(self, req: jobs_pb2.RevokeJobRequest, call: Call) -> jobs_pb2.Job:
        call.job_id = req.job_id
        return job_to_proto(self.grants.revoke(req.job_id, req.reason, call.identity),
                            self.home.config)

    # -- QueryService ------------------------------------------------------------

    def run_query(self, req: query_pb2.RunQueryRequest, call: Call) -> query_pb2.QueryResult:
        call.job_id = req.job_id
        job = self.grants.admit(req.job_id, call.identity, "query")
        config = self.home.config
        q = queries.inputs(job.spec, self.name, job.dataset, self.home.snapshots, config)
        call.datasets = [f"{job.dataset.name}@{job.dataset.sha256}"]
        call.details = {"query": q.settings()}
        result = queries.run(q, queries.limits(config))
        used = queries.meters(result)
        call.meters = used.to_dict()
        call.result_sha256 = result.digest
        call.effect = self.grants.charge(job.id, call.identity, call.method, used)
        return query_result_to_proto(result, call.datasets)

    # -- UsageService ------------------------------------------------------------

    def get_statement(self, req: usage_pb2.GetStatementRequest, call: Call) -> usage_pb2.Statement:
        analyst = req.analyst or (call.identity.name if call.identity.role == "analyst" else "")
        if not analyst:
            raise InvalidInput("name the analyst whose statement you want")
        if call.identity.role == "analyst" and analyst != call.identity.name:
            raise PolicyDenied("analysts may read only their own statement")
        start = parse_user_time(req.from_time, "from_time") if req.from_time else None
        end = parse_user_time(req.to_time, "to_time") if req.to_time else None
        lines = self.grants.statement(analyst, start, end)
        return usage_pb2.Statement(
            node=self.name,
            analyst=analyst,
            currency=self.home.config.tariff.currency,
            lines=[
                usage_pb2.StatementLine(
                    log_index=line["log_index"], time=line["time"], job_id=line["job"],
                    method=line["method"], meters=meters_to_proto(line["meters"].to_dict()),
                    amount=str(line["amount"]),
                )
                for line in lines
            ],
            total=str(statement_total(lines)),
        )

    # -- assembly ----------------------------------------------------------------

    def services(self) -> dict[str, list[Method]]:
        return {
            "veil.v1.NodeService": [
                Method("GetInfo", node_pb2.GetInfoRequest, node_pb2.NodeInfo, ANY_ROLE, self.get_info),
            ],
            "veil.v1.CatalogService": [
                Method("ListDatasets", catalog_pb2.ListDatasetsRequest,
                       catalog_pb2.ListDatasetsResponse, ANY_ROLE, self.list_datasets),
                Method("GetDataset", catalog_pb2.GetDatasetRequest, catalog_pb2.Dataset,
                       ANY_ROLE, self.get_dataset),
            ],
            "veil.v1.AuditService": [
                Method("GetCheckpoint", audit_pb2.GetCheckpointRequest, audit_pb2.Checkpoint,
                       AUDITOR, self.get_checkpoint),
                Method("GetEntries", audit_pb2.GetEntriesRequest, audit_pb2.LogEntries,
                       AUDITOR, self.get_entries, streaming=True),
                Method("GetInclusionProof", audit_pb2.GetInclusionProofRequest, audit_pb2.Proof,
                       AUDITOR, self.get_inclusion_proof),
                Method("GetConsistencyProof", audit_pb2.GetConsistencyProofRequest,
                       audit_pb2.Proof, AUDITOR, self.get_consistency_proof),
            ],
            "veil.v1.JobService": [
                Method("SubmitJob", jobs_pb2.SignedJob, jobs_pb2.Job, ANALYST, self.submit_job),
                Method("ListJobs", jobs_pb2.ListJobsRequest, jobs_pb2.ListJobsResponse,
                       ANY_ROLE, self.list_jobs),
                Method("GetJob", jobs_pb2.GetJobRequest, jobs_pb2.Job, ANY_ROLE, self.get_job),
                Method("DecideJob", jobs_pb2.SignedDecision, jobs_pb2.Job, APPROVERS,
                       self.decide_job),
                Method("RevokeJob", jobs_pb2.RevokeJobRequest, jobs_pb2.Job, OPERATOR,
                       self.revoke_job),
            ],
            "veil.v1.QueryService": [
                Method("RunQuery", query_pb2.RunQueryRequest, query_pb2.QueryResult, ANALYST,
                       self.run_query),
            ],
            "veil.v1.UsageService": [
                Method("GetStatement", usage_pb2.GetStatementRequest, usage_pb2.Statement,
                       STATEMENT_READERS, self.get_statement),
            ],
        }


@dataclass
class RunningNode:
    server: grpc.Server
    runtime: NodeRuntime
    port: int
    address: str

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, let running ones finish, log the stop, close the log."""
        self.server.stop(grace).wait()
        try:
            self.runtime.log.append(event("node.stopped", name=self.runtime.name))
        finally:
            self.runtime.log.close()
            self.runtime.conn.close()


def start(node_dir: Path, listen: str | None = None, *, workers: int = 32) -> RunningNode:
    """Start the node's gRPC server; return once it is listening."""
    home = NodeHome(node_dir)
    config = home.config
    address = listen or config.listen
    identity = home.identity
    trust = home.trust()
    node_log = home.open_log()
    runtime = NodeRuntime(home=home, log=node_log, conn=home.connect())
    gate = Gate(trust, node_log, runtime.deny)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veil-rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    services = runtime.services()
    server.add_generic_rpc_handlers([gate.service(name, ms) for name, ms in services.items()])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = grpc.ssl_server_credentials(
        [(identity.read_tls_key(), identity.read_tls_cert())],
        root_certificates=identity.read_ca_cert(),
        require_client_auth=True,
    )
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        node_log.close()
        raise ConfigError(
            f"cannot listen on {address}: {exc}; is the port in use by another process?"
        ) from None
    if port == 0:
        node_log.close()
        raise ConfigError(f"cannot listen on {address}: the address is in use or invalid")
    server.start()
    host = address.rsplit(":", 1)[0]
    bound = f"{host}:{port}"
    for name in ["", *services]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log_start(runtime, bound)
    return RunningNode(server, runtime, port, bound)


def _log_start(runtime: NodeRuntime, address: str) -> None:
    """Log the start, and a policy change when node.toml differs from the last start's.

    The node reads node.toml only when it starts; its digest is in every node.started
    entry, so an auditor sees which configuration each period of the log ran under.
    """
    config_sha = hashlib.sha256(runtime.home.config_path.read_bytes()).hexdigest()
    with runtime.lock:
        row = runtime.conn.execute("SELECT value FROM meta WHERE key = 'config_sha256'").fetchone()
    previous = None if row is None else str(row[0])

    def remember(tx: sqlite3.Connection, _index: int) -> None:
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('config_sha256', ?)",
                   (config_sha,))

    if previous is not None and previous != config_sha:
        runtime.log.append(event("policy.changed", previous_sha256=previous,
                                 config_sha256=config_sha))
    runtime.log.append(
        event("node.started", name=runtime.name, address=address, version=VERSION,
              config_sha256=config_sha),
        effect=remember,
    )


def serve(node_dir: Path, listen: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    node = start(node_dir, listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"veil node {node.runtime.name!r} listening on {node.address}", flush=True)
    stop.wait()
    print("shutting down: finishing running calls", flush=True)
    node.stop(grace=10)
    print("stopped", flush=True)
