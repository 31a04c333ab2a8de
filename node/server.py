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

import fcntl
import os

import hashlib
import logging
import signal
import sqlite3
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from veil.node import bounds
from veil.node._rpc import Gate
from veil.node.context import VERSION, NodeContext
from veil.node.errors import ConfigError
from veil.node.home import NodeHome
from veil.node.log import event
from veil.node.services import tables

log = logging.getLogger("veil.server")



@dataclass
class RunningNode:
    server: grpc.Server
    ctx: NodeContext
    port: int
    address: str
    lock_fd: int = -1  # the node directory's serve lock, held while serving

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, let running ones finish, log the stop, close the log."""
        self.server.stop(grace).wait()
        self.ctx.close()
        try:
            self.ctx.log.append(event("node.stopped", name=self.ctx.name))
        finally:
            self.ctx.log.close()
            self.ctx.conn.close()
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1


LOCK_FILE = "serve.lock"


def _serve_lock(node_dir: Path) -> int:
    """Hold an exclusive lock on the node directory while serving: two servers on one
    directory would interleave two logs' appends. The holder's pid and address are in the
    lock file, so the refusal can say who serves it."""
    path = node_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"node directory {node_dir} is already being served ({holder}); "
                          f"stop that node first (`veil node stop {node_dir}` if detached)") from None
    return fd


def _note_holder(fd: int, address: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} at {address}\n".encode(), 0)


def start(node_dir: Path, listen: str | None = None, *, workers: int = 32) -> RunningNode:
    """Start the node's gRPC server; return once it is listening. The node directory is
    locked while it serves (a second server on it is refused, naming the first)."""
    NodeHome(node_dir).check()
    lock = _serve_lock(Path(node_dir))
    try:
        node = _start(node_dir, listen, workers)
    except BaseException:
        os.close(lock)
        raise
    _note_holder(lock, node.address)
    node.lock_fd = lock
    return node


def _start(node_dir: Path, listen: str | None, workers: int) -> RunningNode:
    home = NodeHome(node_dir)
    config = home.config
    address = listen or config.listen
    identity = home.identity
    trust = home.trust()
    node_log = home.open_log()
    ctx = NodeContext(home=home, log=node_log, conn=home.connect(), trust=trust)
    gate = Gate(trust, node_log, ctx.deny, ctx.grants)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veil-rpc"),
        options=[
            # above every per-method limit, so an oversize request reaches the gate
            ("grpc.max_receive_message_length", bounds.GRPC_MAX_RECEIVE),
            ("grpc.max_send_message_length", bounds.GRPC_MAX_RECEIVE),
            ("grpc.so_reuseport", 0),
        ],
    )
    services = tables(ctx)
    server.add_generic_rpc_handlers([gate.service(name, rpcs) for name, rpcs in services.items()])
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
    _log_start(ctx, bound)
    return RunningNode(server, ctx, port, bound)


def _log_start(ctx: NodeContext, address: str) -> None:
    """Log the start, and a policy change when node.toml differs from the last start's.

    The node reads node.toml only when it starts; its digest is in every node.started
    entry, so an auditor sees which configuration each period of the log ran under.
    """
    config_sha = hashlib.sha256(ctx.home.config_path.read_bytes()).hexdigest()
    with ctx.lock:
        row = ctx.conn.execute("SELECT value FROM meta WHERE key = 'config_sha256'").fetchone()
    previous = None if row is None else str(row[0])

    def remember(tx: sqlite3.Connection, _index: int) -> None:
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('config_sha256', ?)",
                   (config_sha,))

    if previous is not None and previous != config_sha:
        ctx.log.append(event("policy.changed", previous_sha256=previous,
                                 config_sha256=config_sha))
    ctx.log.append(
        event("node.started", name=ctx.name, address=address, version=VERSION,
              config_sha256=config_sha),
        effect=remember,
    )


def serve(node_dir: Path, listen: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    node = start(node_dir, listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"veil node {node.ctx.name!r} listening on {node.address}", flush=True)
    stop.wait()
    print("shutting down: finishing running calls", flush=True)
    node.stop(grace=10)
    print("stopped", flush=True)
